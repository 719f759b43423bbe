"""What every document reader shares: the read options, the InputStats bookkeeping, and how a bad record is
reported (an error naming FILE:WHERE, or skipped and counted with --skip-bad)."""
from __future__ import annotations

from dataclasses import dataclass

from data_prep.errors import DataPrepError
from data_prep.sources import InputSource
from data_prep.stats import InputStats
from data_prep.text import decode_utf8

BATCH_ROWS = 1024


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    doc_split: str = "none"          # plain text: "none" (file = document) | "blank-lines" | "lines"
    skip_bad: bool = False
    hf_split: str | None = None


class Reader:
    """Base: `iter(reader)` yields raw document texts (maybe empty); `consumed` = input bytes read so far."""

    def __init__(self, src: InputSource, opts: ReadOptions, stats: InputStats):
        self.src, self.opts, self.stats = src, opts, stats
        self.consumed = 0

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")     # the common case, without decode_utf8's call and tuple per document
        except UnicodeDecodeError:
            pass
        text, bad = decode_utf8(data)
        if bad:
            self.stats.invalid_utf8_documents += 1
            self.stats.invalid_utf8_sequences += bad
        return text

    def _bad(self, where: str, msg: str) -> None:
        if not self.opts.skip_bad:
            raise DataPrepError(f"{self.src.path}:{where}: {msg} (use --skip-bad to skip such records)")
        self.stats.bad_records_skipped += 1

    def _field(self, record, where: str) -> str | None:
        field = self.opts.text_field
        if not isinstance(record, dict):
            self._bad(where, f"expected a JSON object, got {type(record).__name__}")
            return None
        value = record.get(field) if field in record else _dotted(record, field)
        if value is None:
            if field in record:
                self._bad(where, f"field {field!r} is null")
            else:
                keys = ", ".join(list(record)[:8]) or "none"
                self._bad(where, f"no field {field!r} (fields: {keys}; choose one with --text-field)")
            return None
        if not isinstance(value, str):
            self._bad(where, f"field {field!r} is {type(value).__name__}, expected a string")
            return None
        return value


def _dotted(record: dict, field: str):
    node = record
    for key in field.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
