"""Typed, validated settings of the data_prep subcommands (built from the CLI through pipeline.config)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pipeline.config.base import check

DocSplit = Literal["none", "blank-lines", "lines"]


@dataclass
class InputOptions:
    inputs: list[str] = field(default_factory=list)
    text_field: str = "text"             # JSONL / Parquet / HF column holding the document text
    doc_split: DocSplit = "none"         # plain text: file = document | paragraphs | lines
    skip_bad: bool = False               # skip (and count) bad records / binary files instead of failing
    hf_split: str | None = None          # HF DatasetDict split (default: every split) / load_dataset split

    def validate(self) -> None:
        check(len(self.inputs) > 0, "inputs", "at least one input file, folder or glob is required")
        check(bool(self.text_field), "--text-field", "must not be empty")


@dataclass
class ShardConfig(InputOptions):
    output: str = ""
    tokenizer: str = ""
    eos_id: int | None = None
    eos_token: str | None = None
    val_fraction: float = 0.01
    split_seed: int = 0
    shard_tokens: int = 100_000_000
    encode_piece_chars: int = 1_000_000  # longer documents are encoded in whitespace-aligned pieces
    workers: int = 1
    progress: bool = True
    overwrite: bool = False

    # Execution-only settings: they never change the output bytes, so they are not recorded or fingerprinted.
    EXECUTION_ONLY = ("workers", "progress", "overwrite")

    def validate(self) -> None:
        super().validate()
        check(bool(self.output), "--output", "is required")
        check(bool(self.tokenizer), "--tokenizer", "is required")
        check(0.0 <= self.val_fraction <= 1.0, "--val-fraction", f"must be in [0, 1], got {self.val_fraction}")
        check(self.shard_tokens >= 1, "--shard-tokens", f"must be >= 1, got {self.shard_tokens}")
        check(self.encode_piece_chars >= 1024, "--encode-piece-chars",
              f"must be >= 1024, got {self.encode_piece_chars}")
        check(self.workers >= 1, "--workers", f"must be >= 1, got {self.workers}")
        check(0 <= self.split_seed < 2**64, "--split-seed", f"must be in [0, 2^64), got {self.split_seed}")
        check(self.eos_id is None or self.eos_id >= 0, "--eos-id", f"must be >= 0, got {self.eos_id}")

    def recorded(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.EXECUTION_ONLY}


@dataclass
class TrainTokenizerConfig(InputOptions):
    output: str = ""                     # path of the .model to write (a .vocab is written beside it)
    vocab_size: int = 32000
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = 0.9995
    input_sentence_size: int = 2_000_000  # lines sampled for training (0 = all)
    max_sentence_length: int = 4192      # bytes; longer lines are re-split, never dropped
    byte_fallback: bool = True
    split_digits: bool = True
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        super().validate()
        check(self.output.endswith(".model"), "--output", f"must be a path ending in .model, got {self.output!r}")
        check(self.vocab_size >= 8, "--vocab-size", f"must be >= 8, got {self.vocab_size}")
        check(0 < self.character_coverage <= 1, "--character-coverage",
              f"must be in (0, 1], got {self.character_coverage}")
        check(self.input_sentence_size >= 0, "--input-sentence-size", f"must be >= 0, got {self.input_sentence_size}")
        check(self.max_sentence_length >= 64, "--max-sentence-length",
              f"must be >= 64, got {self.max_sentence_length}")
        check(self.threads >= 1, "--threads", f"must be >= 1, got {self.threads}")
