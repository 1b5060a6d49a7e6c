"""`localdpo export`: `exporter` (a run as a Hugging Face directory or a GGUF, read back before it is kept),
`gguf` (the GGUF writer), `ollama` (the Modelfile), `modelcard` (what it was trained on and how it did)."""
