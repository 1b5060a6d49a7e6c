"""`localdpo export`: a trained model as a Hugging Face directory or a GGUF with an Ollama Modelfile and a model card."""
