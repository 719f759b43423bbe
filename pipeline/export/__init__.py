"""Checkpoint consolidation (one safetensors file + config, loadable on one CPU process), loading for
inference, and the Hugging Face export of any model (transformers' OlmoeForCausalLM, or the shipped
over_tokenized_olmoe remote code for Over-Encoding / Over-Decoding models) with its tokenizer."""

from pipeline.export import external_shards  # noqa: F401  (importing it registers its merger)
