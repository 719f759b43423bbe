"""Checkpoint consolidation (one safetensors file + config, loadable on one CPU process), loading for
inference, and export to the Hugging Face transformers OlmoeForCausalLM layout."""

from pipeline.export import external_shards as _external_shards  # noqa: E402,F401  (registers its merger)
