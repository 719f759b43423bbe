"""Streaming document readers, one per input format. Each yields document texts in file order.

Memory stays bounded by the largest document, never by the file or corpus: text and JSONL are read line by
line through the (de)compressor, Parquet by record batches, HF datasets by Arrow batches (memory-mapped).
Every reader counts what it repairs or skips into an InputStats, and turns any read failure into a one-line
DataPrepError naming the file (and line or row where there is one).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterator

from data_prep.errors import DataPrepError
from data_prep.sources import InputSource
from data_prep.stats import InputStats
from data_prep.text import decode_utf8

_BATCH_ROWS = 1024
_BINARY_PROBE = 8192


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


def _open_binary(src: InputSource):
    """(buffered decompressed stream, raw file) for a text or JSONL file."""
    raw = open(src.path, "rb")
    if src.compression == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif src.compression == "zstd":
        import zstandard
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        return io.BufferedReader(raw, buffer_size=1 << 20), raw
    return io.BufferedReader(stream, buffer_size=1 << 20), raw


def _read_errors():
    errs = [OSError, EOFError, zlib.error]
    try:
        import zstandard
        errs.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is in requirements.txt
        pass
    return tuple(errs)


_BLOCK = 1 << 20
# A paragraph separator: the end of a line, then one or more blank (whitespace-only) lines.
_PARAGRAPH_SEP = re.compile(rb"\n(?:[ \t\r\x0b\x0c]*\n)+")
_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t\r\x0b\x0c]*\n)+")
_TRAILING_BLANK_LINES = re.compile(rb"(?:\n[ \t\r\x0b\x0c]*)+\Z")


class TextReader(Reader):
    """Plain text read in 1 MB blocks: one document per file, per paragraph, or per line."""

    def _blocks(self, stream, raw) -> Iterator[bytes]:
        first = True
        while block := stream.read(_BLOCK):
            self.consumed = raw.tell()
            if first:
                if b"\x00" in block[:_BINARY_PROBE]:
                    if not self.opts.skip_bad:
                        raise DataPrepError(f"{self.src.path}: holds binary data (NUL bytes), not text "
                                            "(use --skip-bad to skip such files)")
                    self.stats.binary_files_skipped += 1
                    return
                block = block.removeprefix(b"\xef\xbb\xbf")
                first = False
            yield block

    def __iter__(self) -> Iterator[str]:
        stream, raw = _open_binary(self.src)
        with raw, stream:
            blocks = self._blocks(stream, raw)
            if self.opts.doc_split == "none":
                data = b"".join(blocks)
                if data or not self.stats.binary_files_skipped:
                    yield self._decode(data)
            elif self.opts.doc_split == "lines":
                yield from self._lines(blocks)
            else:
                yield from self._paragraphs(blocks)

    def _lines(self, blocks: Iterator[bytes]) -> Iterator[str]:
        carry = b""
        for block in blocks:
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for line in lines:
                yield self._decode(line.removesuffix(b"\r"))
        if carry:
            yield self._decode(carry.removesuffix(b"\r"))

    def _paragraph(self, data: bytes | bytearray) -> str | None:
        """A paragraph's text without blank lines before it and without its final line terminator."""
        if data[:1].isspace():
            m = _LEADING_BLANK_LINES.match(data)
            data = data[m.end():] if m else data
        data = data.rstrip(b"\r\n")
        if not data or data.isspace():
            return None   # whitespace only: blank lines, not a document
        return self._decode(data)

    def _paragraphs(self, blocks: Iterator[bytes]) -> Iterator[str]:
        buf = bytearray()
        for block in blocks:
            # A separator can only begin at the last newline already in the buffer or later.
            search_from = max(0, buf.rfind(b"\n"))
            buf += block
            start = 0
            for m in _PARAGRAPH_SEP.finditer(buf, search_from):
                text = self._paragraph(buf[start:m.start()])
                if text is not None:
                    yield text
                start = m.end()
            if start:
                del buf[:start]
        # Mid-file paragraphs end where a separator begins; the last one may end in blank lines without "\n".
        text = self._paragraph(_TRAILING_BLANK_LINES.sub(b"", bytes(buf)))
        if text is not None:
            yield text


class JsonlReader(Reader):
    def __iter__(self) -> Iterator[str]:
        stream, raw = _open_binary(self.src)
        with raw, stream:
            for n, line in enumerate(stream, start=1):
                if n % 256 == 0:
                    self.consumed = raw.tell()
                if not line.strip():
                    self.stats.blank_lines += 1
                    continue
                try:
                    record = json.loads(line)
                except UnicodeDecodeError:
                    try:
                        record = json.loads(self._decode(line))
                    except json.JSONDecodeError as e:
                        self._bad(str(n), f"invalid JSON ({e.msg} at column {e.colno})")
                        continue
                except json.JSONDecodeError as e:
                    self._bad(str(n), f"invalid JSON ({e.msg} at column {e.colno})")
                    continue
                text = self._field(record, str(n))
                if text is not None:
                    yield text
            self.consumed = raw.tell()


def _column_texts(reader: Reader, values: list, first_row: int, where: str = "") -> Iterator[str]:
    """Texts of one batch of a text column (rows numbered from 1 per file/split); nulls and non-strings are
    bad records."""
    field = reader.opts.text_field
    for row, value in enumerate(values, start=first_row):
        if isinstance(value, str):
            yield value
        elif value is None:
            reader._bad(f"{where}row {row}", f"field {field!r} is null")
        else:
            reader._bad(f"{where}row {row}", f"field {field!r} is {type(value).__name__}, expected a string")


def _require_column(src: InputSource, names: list[str], field: str, where: str = "") -> None:
    if field not in names:
        raise DataPrepError(f"{src.path}{where}: no column {field!r} (columns: {', '.join(names[:12])}; "
                            "choose one with --text-field)")


class ParquetReader(Reader):
    def __iter__(self) -> Iterator[str]:
        import pyarrow.parquet as pq
        f = pq.ParquetFile(self.src.path)
        _require_column(self.src, f.schema_arrow.names, self.opts.text_field)
        size, total = os.path.getsize(self.src.path), max(1, f.metadata.num_rows)
        done = 0
        for batch in f.iter_batches(batch_size=_BATCH_ROWS, columns=[self.opts.text_field]):
            yield from _column_texts(self, batch.column(0).to_pylist(), done + 1)
            done += batch.num_rows
            self.consumed = size * done // total


class HfDiskReader(Reader):
    """A `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder (every split, or --hf-split)."""

    def __iter__(self) -> Iterator[str]:
        import datasets
        ds = datasets.load_from_disk(self.src.path)
        if isinstance(ds, datasets.DatasetDict):
            names = [self.opts.hf_split] if self.opts.hf_split else list(ds.keys())
            for name in names:
                if name not in ds:
                    raise DataPrepError(f"{self.src.path}: no split {name!r} (splits: {', '.join(ds.keys())})")
            parts = [(f" split {n}", ds[n]) for n in names]
        else:
            parts = [("", ds)]
        size = self.src.nbytes()
        total = max(1, sum(len(d) for _, d in parts))
        done = 0
        for where, d in parts:
            _require_column(self.src, d.column_names, self.opts.text_field, where)
            arrow = d.select_columns([self.opts.text_field]).with_format("arrow")
            row = 1
            for table in arrow.iter(batch_size=_BATCH_ROWS):
                yield from _column_texts(self, table.column(0).to_pylist(), row, f"{where.strip()} " if where else "")
                row += table.num_rows
                done += table.num_rows
                self.consumed = size * done // total


class HfLoadReader(Reader):
    """Local files or a local dataset folder through `datasets.load_dataset(..., streaming=True)`."""

    def __iter__(self) -> Iterator[str]:
        import datasets
        kwargs = {}
        if self.src.builder == "csv" and all(f.endswith(".tsv") for f in self.src.data_files):
            kwargs["delimiter"] = "\t"
        target = self.src.builder or self.src.path
        files = list(self.src.data_files) or None
        try:
            ds = datasets.load_dataset(target, data_files=files, split=self.opts.hf_split or "train",
                                       streaming=True, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            raise DataPrepError(f"{self.src.path}: datasets.load_dataset failed ({str(e).splitlines()[0]})") from None
        size, row = self.src.nbytes(), 1
        for batch in ds.iter(batch_size=_BATCH_ROWS):
            if row == 1:
                _require_column(self.src, list(batch), self.opts.text_field)
            values = batch[self.opts.text_field]
            yield from _column_texts(self, values, row)
            row += len(values)
            # Rows carry no file offsets when streaming: estimate progress by the text read so far.
            self.consumed = min(size, self.consumed + sum(len(t) for t in values if isinstance(t, str)))
        self.consumed = size


_READERS = {"text": TextReader, "jsonl": JsonlReader, "parquet": ParquetReader, "hf_disk": HfDiskReader,
            "hf_load": HfLoadReader}


def read_documents(src: InputSource, opts: ReadOptions, stats: InputStats) -> Reader:
    return _READERS[src.kind](src, opts, stats)


def iter_nonempty(reader: Reader) -> Iterator[str]:
    """Documents with content; empty and whitespace-only ones are counted and dropped. Read errors name
    the file."""
    stats = reader.stats
    errors = _read_errors()
    try:
        for text in reader:
            if not text or text.isspace():
                stats.empty_skipped += 1
                continue
            stats.documents += 1
            yield text
    except DataPrepError:
        raise
    except errors as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DataPrepError(f"{reader.src.path}: cannot read ({reason})") from None
    except Exception as e:  # pyarrow / datasets raise their own types for corrupt files
        if type(e).__module__.split(".")[0] in ("pyarrow", "datasets", "json"):
            raise DataPrepError(f"{reader.src.path}: cannot read ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        raise
