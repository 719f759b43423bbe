"""The block-wise plain-text splitters agree with the line-by-line definition, across any block boundary."""
from __future__ import annotations

import random

import pytest

import data_prep.readers as readers
from data_prep.readers import ReadOptions, TextReader
from data_prep.sources import InputSource
from data_prep.stats import InputStats
from data_prep.text import split_bytes


def _reference(data: bytes, mode: str) -> list[str]:
    lines = data.split(b"\n")
    if mode == "lines":
        if data.endswith(b"\n") or not data:
            lines = lines[:-1]
        return [ln.removesuffix(b"\r").decode() for ln in lines]
    out, para = [], []
    for line in lines:                      # a paragraph = consecutive non-blank lines
        if line.strip():
            para.append(line)
        elif para:
            out.append(b"\n".join(para).rstrip(b"\r\n").decode())
            para = []
    if para:
        out.append(b"\n".join(para).rstrip(b"\r\n").decode())
    return out


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
def test_paragraph_and_line_splitting_match_reference(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "_BLOCK", block)   # our own module constant: force blocks to cut everywhere
    rng = random.Random(block)
    pieces = [b"a", b"bb", b" ", b"\n", b"\r\n", b"\t", b"  \n", b"x y", b"\r", "é".encode()]
    f = tmp_path / "t.txt"
    for _ in range(150):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        f.write_bytes(data)
        for mode in ("blank-lines", "lines"):
            got = list(TextReader(InputSource(str(f), "text"), ReadOptions(doc_split=mode), InputStats()))
            assert got == _reference(data, mode), (mode, data)


def test_split_bytes_is_lossless_and_bounded():
    rng = random.Random(0)
    for _ in range(200):
        alphabet = ["a", "bc ", ". ", "\n", "é", "日本", "😀", "  "]
        data = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        raw = data.encode()
        limit = rng.randint(8, 64)
        parts = split_bytes(raw, limit)
        assert b"".join(parts) == raw and all(len(p) <= limit for p in parts)
        for p in parts:
            p.decode()                              # every cut is at a character boundary
