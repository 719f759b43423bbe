"""Checkpoint consolidation (one safetensors file + config, loadable on one CPU process), loading for
inference, and export to the Hugging Face transformers OlmoeForCausalLM layout."""
