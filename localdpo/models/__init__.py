"""Loading models and tokenizers: the hub, local directories, LoRA adapters, and the embedded SmolLM2 GGUF."""
