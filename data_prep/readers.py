"""Streaming document readers, one per input format. Each yields document texts in file order.

Memory stays bounded by the largest document, never by the file or corpus: text and JSONL are read line by
line through the (de)compressor, Parquet by record batches, HF datasets by Arrow batches (memory-mapped).
Every reader counts what it repairs or skips into an InputStats, and turns any read failure into a one-line
DataPrepError naming the file (and line or row where there is one). A file that ends early is a read failure
wherever the format can tell (compressed.py, containers.py; docs/data_prep.md lists what cannot be told).
"""
from __future__ import annotations

import json
import re
import zlib
from typing import Iterator

from data_prep.columnar import HfDiskReader, HfLoadReader, ParquetReader
from data_prep.compressed import open_decompressed
from data_prep.errors import DataPrepError
from data_prep.reader_base import ReadOptions, Reader
from data_prep.sources import InputSource
from data_prep.stats import InputStats

__all__ = ["ReadOptions", "Reader", "TextReader", "JsonlReader", "read_documents", "iter_nonempty"]

_BINARY_PROBE = 8192


def _open_binary(src: InputSource):
    """(buffered decompressed stream, raw file) for a text or JSONL file."""
    return open_decompressed(src.path, src.compression)


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
    def _invalid(self, n: int, line: bytes, e: json.JSONDecodeError) -> None:
        if not line.endswith(b"\n"):
            # Only the last line can lack its line end, and a record cut there is exactly what a truncated file
            # looks like: an error even with --skip-bad (skipping it would quietly drop the file's tail).
            raise DataPrepError(f"{self.src.path}:{n}: the last line is incomplete JSON ({e.msg} at column "
                                f"{e.colno}) and has no line end: the file looks truncated")
        self._bad(str(n), f"invalid JSON ({e.msg} at column {e.colno})")

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
                        self._invalid(n, line, e)
                        continue
                except json.JSONDecodeError as e:
                    self._invalid(n, line, e)
                    continue
                text = self._field(record, str(n))
                if text is not None:
                    yield text
            self.consumed = raw.tell()


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
