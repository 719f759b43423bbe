"""Decompression that proves it reached the end of the file, for `.gz` and `.zst` inputs.

A decompressor that stops quietly where the file stops turns a truncated download into a shorter dataset with
exit 0. What each format lets us prove:

- gzip: Python's `gzip` raises EOFError / BadGzipFile for a member cut anywhere (header, deflate data, CRC32 /
  ISIZE trailer) and checks the CRC32 of every member, so a flipped bit in the data is caught. It accepts an
  empty file as an empty stream: we refuse that. A file cut exactly between two members of a multi-member
  file is a valid, shorter gzip file: undetectable from the file alone.
- zstd: `zstandard`'s stream reader returns short data without an error for a frame cut anywhere, with or
  without a checksum. So before decoding, `check_zstd_frames` walks the frame structure (frame header, block
  headers, the block flagged last, the optional 4-byte checksum, skippable frames) and requires that the file
  ends exactly where its last frame ends; anything else (a cut, trailing garbage) is an error naming the
  offset. While decoding, frames with a content checksum are checked by libzstd (a flipped bit is caught);
  when every frame records its content size, the decoded byte count is compared with their sum. A frame
  WITHOUT checksum whose data bits are flipped may decode to different bytes without any error: nothing in
  such a frame can detect it. As with gzip, a cut exactly between two frames is undetectable.
"""
from __future__ import annotations

import gzip
import io
import os

from data_prep.errors import DataPrepError

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


def _corrupt(path, fmt: str, detail: str) -> DataPrepError:
    return DataPrepError(f"{path}: truncated or corrupt {fmt} file ({detail}); it was not read to a verified "
                         "end, re-create or re-download it")


def check_zstd_frames(f, path, size: int) -> int | None:
    """Walk the zstd frames of the open binary file `f` (`size` bytes); return the total content size when
    every frame's header records it, else None. Raises naming the file and offset when the file does not end
    exactly at the end of a complete frame (RFC 8878, section 3.1)."""
    def read_at(pos: int, n: int, what: str) -> bytes:
        f.seek(pos)
        data = f.read(n)
        if len(data) < n:
            raise _corrupt(path, "zstd", f"ends at byte {size} inside {what}")
        return data

    if size == 0:
        raise _corrupt(path, "zstd", "empty file, no zstd frame")
    pos, frames, content = 0, 0, 0
    while pos < size:
        magic = int.from_bytes(read_at(pos, 4, f"the magic number of frame {frames + 1}"), "little")
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            pos += 8 + int.from_bytes(read_at(pos + 4, 4, "a skippable frame header"), "little")
            if pos > size:
                raise _corrupt(path, "zstd", f"ends at byte {size} inside a skippable frame")
            continue
        if magic != _ZSTD_MAGIC:
            raise _corrupt(path, "zstd", f"no zstd frame starts at byte {pos}")
        frames += 1
        fhd = read_at(pos + 4, 1, f"the header of frame {frames}")[0]
        fcs_flag, single_segment, has_checksum = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1
        if fhd & 0x08:
            raise _corrupt(path, "zstd", f"reserved bit set in the header of frame {frames} at byte {pos}")
        fcs_bytes = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        did_bytes = (0, 1, 2, 4)[fhd & 3]
        header = 1 + (0 if single_segment else 1) + did_bytes + fcs_bytes
        if pos + 4 + header > size:
            raise _corrupt(path, "zstd", f"ends at byte {size} inside the header of frame {frames}")
        fcs_at = pos + 4 + header - fcs_bytes
        if fcs_bytes:
            value = int.from_bytes(read_at(fcs_at, fcs_bytes, f"the header of frame {frames}"), "little")
            content = None if content is None else content + value + (256 if fcs_bytes == 2 else 0)
        else:
            content = None   # this frame does not record its size: no byte-count check for the file
        pos += 4 + header
        while True:   # blocks: 3-byte header (last flag, type, size), then the block's bytes
            block = int.from_bytes(read_at(pos, 3, f"frame {frames} before its last block"), "little")
            btype, bsize = (block >> 1) & 3, block >> 3
            if btype == 3:
                raise _corrupt(path, "zstd", f"reserved block type in frame {frames} at byte {pos}")
            pos += 3 + (1 if btype == 1 else bsize)
            if pos > size:
                raise _corrupt(path, "zstd", f"ends at byte {size} inside a block of frame {frames}")
            if block & 1:
                break
        if has_checksum:
            pos += 4
            if pos > size:
                raise _corrupt(path, "zstd", f"ends at byte {size} inside the checksum of frame {frames}")
    if frames == 0:
        raise _corrupt(path, "zstd", "no zstd frame, only skippable frames")
    return content


class _CountedZstd(io.RawIOBase):
    """A zstd stream reader that, at its end, compares the bytes it produced with the frames' content sizes."""

    def __init__(self, raw, path, expected: int | None):
        import zstandard
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        self._path, self._expected, self._produced = path, expected, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._reader.readinto(b)
        self._produced += n
        if n == 0 and self._expected is not None and self._produced != self._expected:
            raise _corrupt(self._path, "zstd", f"decoded {self._produced} bytes, the frame headers record "
                           f"{self._expected}")
        return n

    def close(self) -> None:
        self._reader.close()
        super().close()


def open_decompressed(path, compression: str | None):
    """(buffered decompressed stream, raw file) of a text or JSONL file; `raw.tell()` is the progress."""
    raw = open(path, "rb")
    try:
        size = os.fstat(raw.fileno()).st_size
        if compression == "gzip":
            if size == 0:
                raise _corrupt(path, "gzip", "empty file, no gzip member")
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "zstd":
            expected = check_zstd_frames(raw, path, size)
            raw.seek(0)
            stream = _CountedZstd(raw, path, expected)
        else:
            return io.BufferedReader(raw, buffer_size=1 << 20), raw
    except BaseException:
        raw.close()
        raise
    return io.BufferedReader(stream, buffer_size=1 << 20), raw


def drain(path, compression: str) -> None:
    """Decompress the whole file and discard the output: proves it is complete (for files that another
    library will read, e.g. compressed JSONL behind `datasets.load_dataset`)."""
    stream, raw = open_decompressed(path, compression)
    with raw, stream:
        while stream.read(1 << 20):
            pass
