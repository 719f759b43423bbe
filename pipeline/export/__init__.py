"""Checkpoint consolidation (one safetensors file + config, loadable on one CPU process), loading for
inference, and export to the Hugging Face transformers OlmoeForCausalLM layout."""

from pipeline.export import external_shards  # noqa: F401  (importing it registers its merger)
