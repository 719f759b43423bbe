"""The shard folder's `manifest.json`: schema, atomic writing, loading and verification.

The manifest is written last by data_prep, so a folder without one is never mistaken for a complete data set.
`load_manifest(folder, verify=...)` is what every consumer (data loader, `python -m data_prep verify`) calls:
  "none"  schema only;
  "size"  every shard exists, has the recorded byte sizes, and its index is structurally sound (cheap);
  "full"  additionally the sha256 of every .bin and .idx (reads all data once).
Any problem raises ShardError with the path of the first bad file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

from pipeline.data.atomic_io import atomic_write_bytes
from pipeline.data.indexed_dataset import (TOKEN_DTYPES, IndexedShardReader, ShardError, bin_path, idx_nbytes,
                                           idx_path)

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "megatron-indexed-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
Verify = Literal["none", "size", "full"]


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


@dataclass
class TokenizerRecord:
    path: str
    sha256: str
    kind: str            # "sentencepiece" | "hf_tokenizers"
    vocab_size: int
    eos_id: int


@dataclass
class ShardRecord:
    split: str
    index: int
    bin: str             # file names, relative to the manifest's folder
    idx: str
    tokens: int          # EOS included
    documents: int
    bin_sha256: str
    idx_sha256: str
    bin_bytes: int
    idx_bytes: int

    @property
    def prefix(self) -> str:
        return self.bin[: -len(".bin")]


@dataclass
class Manifest:
    dtype: str
    tokenizer: TokenizerRecord
    shards: list[ShardRecord]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    totals: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.totals = compute_totals(self.shards)

    def split_shards(self, split: str) -> list[ShardRecord]:
        return [s for s in self.shards if s.split == split]

    def to_json(self) -> str:
        d = asdict(self)
        order = ["format", "format_version", "fingerprint", "tokenizer", "dtype", "totals", "shards", "inputs",
                 "arguments", "statistics"]
        return json.dumps({k: d[k] for k in order}, indent=1, sort_keys=False) + "\n"


def compute_totals(shards: list[ShardRecord]) -> dict[str, dict[str, int]]:
    totals = {}
    for split in (*SPLITS, "all"):
        sel = [s for s in shards if split in ("all", s.split)]
        totals[split] = {"shards": len(sel), "documents": sum(s.documents for s in sel),
                         "tokens": sum(s.tokens for s in sel)}
    return totals


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def _require(cond: bool, where: Path, msg: str) -> None:
    if not cond:
        raise ShardError(f"{where}: {msg}")


def _parse(path: Path, raw: dict) -> Manifest:
    _require(isinstance(raw, dict), path, "top level must be an object")
    _require(raw.get("format") == FORMAT_NAME, path, f"not a shard manifest (format {raw.get('format')!r})")
    _require(raw.get("format_version") == FORMAT_VERSION, path,
             f"unsupported format_version {raw.get('format_version')!r} (this code reads {FORMAT_VERSION})")
    _require(raw.get("dtype") in TOKEN_DTYPES, path, f"dtype must be one of {TOKEN_DTYPES}, got {raw.get('dtype')!r}")
    try:
        tok = TokenizerRecord(**raw["tokenizer"])
        shards = [ShardRecord(**s) for s in raw["shards"]]
    except (KeyError, TypeError) as e:
        raise ShardError(f"{path}: malformed manifest ({e})") from None
    _require(0 <= tok.eos_id < tok.vocab_size, path, f"eos_id {tok.eos_id} outside vocab_size {tok.vocab_size}")
    seen = {split: 0 for split in SPLITS}
    for s in shards:
        _require(s.split in SPLITS, path, f"shard {s.bin}: unknown split {s.split!r}")
        _require(s.index == seen[s.split], path, f"shard {s.bin}: index {s.index}, expected {seen[s.split]}")
        _require(s.bin == shard_name(s.split, s.index) + ".bin" and s.idx == s.prefix + ".idx", path,
                 f"shard {s.bin}: unexpected file names")
        seen[s.split] += 1
    m = Manifest(dtype=raw["dtype"], tokenizer=tok, shards=shards, inputs=raw.get("inputs", []),
                 arguments=raw.get("arguments", {}), statistics=raw.get("statistics", {}),
                 fingerprint=raw.get("fingerprint", ""))
    _require(raw.get("totals") == m.totals, path, "totals disagree with the shard list (edited manifest?)")
    return m


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path}: missing (not a data_prep output folder, or data_prep did not finish)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    return _parse(path, raw)


def verify_shard(folder: Path, rec: ShardRecord, dtype: str, level: Verify, open_index: bool = True) -> None:
    """Check one shard against its manifest record; raises ShardError naming the bad file. open_index=False
    leaves the index structure and its counts to a caller that opens the shard anyway (check_counts): at
    hundreds of millions of documents the index check is the slow part of a rank's start."""
    if level == "none":
        return
    b, i = folder / rec.bin, folder / rec.idx
    for f, size in ((b, rec.bin_bytes), (i, rec.idx_bytes)):
        _require(f.is_file(), f, "missing shard file")
        actual = f.stat().st_size
        _require(actual == size, f, f"{actual} bytes, manifest says {size} (truncated or replaced?)")
    itemsize = np.dtype(dtype).itemsize
    _require(rec.bin_bytes == rec.tokens * itemsize, b, "manifest token count disagrees with its byte size")
    _require(rec.idx_bytes == idx_nbytes(rec.documents), i, "manifest document count disagrees with its byte size")
    if level == "full":
        # Checksums before parsing: a flipped byte is reported as a checksum mismatch of that file.
        for f, want in ((b, rec.bin_sha256), (i, rec.idx_sha256)):
            got = sha256_file(f)
            _require(got == want, f, f"sha256 mismatch (file {got[:12]}…, manifest {want[:12]}…): corrupted")
    if open_index:
        check_counts(IndexedShardReader(folder / rec.prefix, expected_dtype=dtype), rec)


def check_counts(reader: IndexedShardReader, rec: ShardRecord) -> None:
    i = reader.idx_file
    _require(len(reader) == rec.documents and reader.num_tokens == rec.tokens, i,
             f"holds {len(reader)} documents / {reader.num_tokens} tokens, manifest says "
             f"{rec.documents} / {rec.tokens}")


def verify_manifest(folder: str | Path, manifest: Manifest, level: Verify = "full",
                    on_shard: Callable[[ShardRecord], None] | None = None, open_index: bool = True) -> None:
    folder = Path(folder)
    for rec in manifest.shards:
        verify_shard(folder, rec, manifest.dtype, level, open_index)
        if on_shard is not None:
            on_shard(rec)


def load_manifest(folder: str | Path, verify: Verify = "size", open_index: bool = True) -> Manifest:
    """Read `folder/manifest.json` and check the shards at the requested level (see module docstring)."""
    if verify not in ("none", "size", "full"):
        raise ValueError(f"verify must be 'none', 'size' or 'full', got {verify!r}")
    m = read_manifest(folder)
    verify_manifest(folder, m, verify, open_index=open_index)
    return m


def iter_documents(folder: str | Path, split: str, manifest: Manifest | None = None) -> Iterator[np.ndarray]:
    """Every document of a split, in order, as token arrays (EOS included). Memory-mapped; no copies."""
    folder = Path(folder)
    m = manifest or read_manifest(folder)
    for rec in m.split_shards(split):
        reader = IndexedShardReader(folder / rec.prefix, expected_dtype=m.dtype)
        for j in range(len(reader)):
            yield reader[j]


__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "SPLITS", "Manifest", "ShardError", "ShardRecord",
           "TokenizerRecord", "bin_path", "check_counts", "idx_path", "iter_documents", "load_manifest", "read_manifest",
           "sha256_file", "shard_name", "verify_manifest", "verify_shard", "write_manifest"]
