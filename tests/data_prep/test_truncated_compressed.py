"""gzip, zstd and JSONL inputs that end early or are corrupt: a one-line error naming the file, exit 2, nothing
half-written (issue 14, class 1), through the real CLI in a fresh process. Real files, cut inside the header,
mid-stream, on a block boundary and just before the end marker, and bit-flipped where the format has a checksum.

Before the fix, the zstd cuts below exited 0 (zstandard's stream reader returns short data silently; only
libzstd's own block and checksum errors were caught), so did the empty .gz file and the JSONL file whose last
record is cut (with --skip-bad); every cut sweep failed."""
from __future__ import annotations

import gzip

import pytest
import zstandard

from data_prep.errors import DataPrepError
from tests.data_prep.integrity_helpers import (DOCS, assert_refused, good_input, jsonl_bytes, read_in_process,
                                               shard_cli)

DATA = jsonl_bytes()


def zstd_frame(data: bytes, checksum: bool) -> tuple[bytes, list[int]]:
    """One frame of many blocks; returns it and the offsets where its blocks end (FLUSH_BLOCK ends a block)."""
    c = zstandard.ZstdCompressor(write_checksum=checksum).compressobj()
    out, ends = b"", []
    for i in range(0, len(data), 4096):
        out += c.compress(data[i:i + 4096]) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        ends.append(len(out))
    return out + c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH), ends


def flipped(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


GZ = gzip.compress(DATA, mtime=0)
GZIP_CASES = {
    "empty file": GZ[:0],
    "cut inside the header": GZ[:5],
    "cut mid-stream": GZ[:len(GZ) // 2],
    "cut before the CRC32/ISIZE trailer": GZ[:-8],
    "cut inside the trailer": GZ[:-3],
    "flipped bit in the deflate data": flipped(GZ, len(GZ) // 2),
    "flipped bit in the CRC32": flipped(GZ, len(GZ) - 6),
}


@pytest.mark.parametrize("case", list(GZIP_CASES))
def test_damaged_gzip_is_refused_naming_the_file(tmp_path, sp_model, case):
    bad = tmp_path / "docs.jsonl.gz"
    bad.write_bytes(GZIP_CASES[case])
    proc, out = shard_cli(tmp_path, sp_model, good_input(tmp_path), bad)
    assert_refused(proc, out, bad)


def _zstd_cases() -> dict[str, bytes]:
    cases = {}
    for checksum in (True, False):
        frame, ends = zstd_frame(DATA, checksum)
        tag = "checksum" if checksum else "no checksum"
        cases.update({
            f"{tag}: cut inside the magic number": frame[:2],
            f"{tag}: cut inside the frame header": frame[:5],
            f"{tag}: cut mid-block": frame[:(ends[1] + ends[2]) // 2],
            f"{tag}: cut on a block boundary": frame[:ends[len(ends) // 2]],
            f"{tag}: cut before the last block": frame[:ends[-1]],   # all data there, no block flagged last
        })
        if checksum:
            cases[f"{tag}: cut before the content checksum"] = frame[:-4]
            cases[f"{tag}: flipped bit in a block"] = flipped(frame, (ends[1] + ends[2]) // 2, 3)
            cases[f"{tag}: flipped bit in the content checksum"] = flipped(frame, len(frame) - 2)
    sized = zstandard.ZstdCompressor(write_checksum=False, write_content_size=True).compress(DATA * 4)
    cases["content size, no checksum: cut mid-stream"] = sized[:len(sized) // 2]
    cases["two frames: trailing garbage after the last"] = frame + frame + b"garbage"
    return cases


ZSTD_CASES = _zstd_cases()


@pytest.mark.parametrize("case", list(ZSTD_CASES))
def test_damaged_zstd_is_refused_naming_the_file(tmp_path, sp_model, case):
    # Read as text, one document per line: no JSON parser that might stumble on a cut record by accident.
    bad = tmp_path / "docs.txt.zst"
    bad.write_bytes(ZSTD_CASES[case])
    proc, out = shard_cli(tmp_path, sp_model, good_input(tmp_path), bad, flags=["--doc-split", "lines"])
    assert_refused(proc, out, bad)


def test_intact_multi_frame_zstd_with_skippable_frame_reads_everything(tmp_path):
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    a, _ = zstd_frame(DATA, True)
    b = zstandard.ZstdCompressor(write_content_size=True).compress(DATA)
    f = tmp_path / "ok.jsonl.zst"
    f.write_bytes(a + skippable + b)
    assert read_in_process(f) == DOCS + DOCS


@pytest.mark.parametrize("fmt", ["gzip", "zstd checksum", "zstd no checksum"])
def test_every_cut_point_is_an_error_or_the_whole_file(tmp_path, fmt):
    """Sweep (in-process, same readers): any cut of a one-member/one-frame file is refused; only the intact
    length reads, in full. (A cut exactly between two members/frames is a valid shorter file: undetectable.)"""
    data = jsonl_bytes(DOCS[:60])
    blob = gzip.compress(data, mtime=0) if fmt == "gzip" else zstd_frame(data, fmt == "zstd checksum")[0]
    f = tmp_path / ("d.txt.gz" if fmt == "gzip" else "d.txt.zst")   # text: only the decompressor can tell
    step = max(1, len(blob) // 400)
    for cut in [*range(0, len(blob), step), *range(len(blob) - 12, len(blob))]:
        f.write_bytes(blob[:cut])
        with pytest.raises(DataPrepError, match=str(f)):
            read_in_process(f, doc_split="lines")
    f.write_bytes(blob)
    assert read_in_process(f, doc_split="lines") == data.decode().splitlines()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_jsonl_whose_last_record_is_cut_is_refused_even_with_skip_bad(tmp_path, sp_model, skip_bad):
    bad = tmp_path / "docs.jsonl"
    bad.write_bytes(DATA[:-25])            # inside the last record, which loses its closing quote, brace, "\n"
    proc, out = shard_cli(tmp_path, sp_model, good_input(tmp_path), bad, flags=["--skip-bad"] if skip_bad else [])
    err = assert_refused(proc, out, bad)
    assert f"{bad}:{len(DOCS)}: the last line is incomplete JSON" in err and "truncated" in err
    # A bad record with its line end is a bad record (skippable), not a truncation; and an intact last line
    # without "\n" is fine.
    bad.write_bytes(DATA + b'{"text": oops}\n' + DATA.splitlines()[0])
    got = read_in_process(bad, skip_bad=True)
    assert got == DOCS + DOCS[:1]
