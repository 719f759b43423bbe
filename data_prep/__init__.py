"""Offline data preparation: raw corpora -> sentencepiece tokenizers and Megatron-format token shards.

CLI: `python -m data_prep {train-tokenizer,shard,verify} --help`. Kept free of torch imports so the CLI and
its worker processes start fast.
"""
__version__ = "1.0"
