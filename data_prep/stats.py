"""Counters of what was read, skipped and repaired, per input file and in total (recorded in the manifest)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class InputStats:
    documents: int = 0                  # non-empty documents handed on for tokenization
    empty_skipped: int = 0              # documents that were empty or whitespace-only
    invalid_utf8_documents: int = 0     # documents in which invalid UTF-8 was replaced by U+FFFD
    invalid_utf8_sequences: int = 0     # invalid byte sequences replaced
    surrogates_repaired: int = 0        # lone surrogates (from JSON escapes) replaced by U+FFFD
    bad_records_skipped: int = 0        # --skip-bad: JSON lines / rows without a usable text field
    binary_files_skipped: int = 0       # --skip-bad: text files that hold binary data
    blank_lines: int = 0                # blank JSONL lines (ignored, as JSON Lines readers do)
    long_documents_split: int = 0       # documents encoded in pieces (see --encode-piece-chars)

    def add(self, other: "InputStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
