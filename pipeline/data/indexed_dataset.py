"""Token shards in Megatron-LM's indexed-dataset format (`.bin` + `.idx`), written and read without torch.

Layout of `<prefix>.idx` (little endian), identical to megatron.core.datasets.indexed_dataset:
    b"MMIDIDX\\x00\\x00" | u64 version = 1 | u8 dtype code | u64 sequence count N | u64 document count N + 1
    | int32 lengths[N] | int64 byte pointers[N] | int64 document indices[N + 1]
`<prefix>.bin` is the concatenated token ids. We store one sequence per document (EOS already appended), so
the document indices are 0..N. megatron-core can open these files with `IndexedDataset(prefix)`.

We write our own writer/reader instead of importing megatron-core's because importing it costs ~7 s and pulls
in torch, which every data-prep worker and every data-loader process would pay; the format itself is tiny and
the equivalence is tested against megatron-core (tests/pipeline/data/test_indexed_dataset.py).
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.atomic_io import commit, tmp_path_for

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # = 34

# Megatron-core's DType codes (megatron/core/datasets/indexed_dataset.py). There is no uint32 code, so a
# vocabulary above 65,536 is stored as int32 — exactly what Megatron-LM's own preprocessing does.
DTYPE_CODES: dict[str, int] = {
    "uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8,
}
TOKEN_DTYPES = ("uint16", "int32")


class ShardError(RuntimeError):
    """A token shard or its manifest is missing, truncated, corrupted or inconsistent; names the file."""


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest token dtype that holds every id of a vocabulary of this size."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= 2**16 else "int32"


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def idx_nbytes(num_documents: int) -> int:
    """Exact size of the .idx file of a shard with this many documents."""
    return _HEADER_BYTES + num_documents * (4 + 8) + (num_documents + 1) * 8


def encode_index(lengths: np.ndarray, dtype: str) -> bytes:
    """Bytes of the .idx file for documents of the given token lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > np.iinfo(np.int32).max):
        raise ValueError("document lengths must be in [1, 2^31)")
    n = int(lengths.size)
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1] * itemsize, out=pointers[1:])
    return b"".join((
        INDEX_HEADER,
        struct.pack("<Q", INDEX_VERSION),
        struct.pack("<B", DTYPE_CODES[dtype]),
        struct.pack("<Q", n),
        struct.pack("<Q", n + 1),
        lengths.astype("<i4").tobytes(),
        pointers.astype("<i8").tobytes(),
        np.arange(n + 1, dtype="<i8").tobytes(),
    ))


@dataclass(frozen=True)
class ShardInfo:
    """What a finished shard holds; the manifest records exactly this per shard."""
    tokens: int
    documents: int
    bin_sha256: str
    idx_sha256: str
    bin_bytes: int
    idx_bytes: int


class IndexedShardWriter:
    """Streams documents into `<prefix>.bin`/`.idx` under temporary names; `finish()` publishes both atomically.

    Until `finish()` returns, no file with the final name exists (an interrupted writer leaves only `*.tmp`
    files), and the checksums are computed on the bytes as they are written, not by re-reading.
    """

    def __init__(self, prefix: str | Path, dtype: str, buffer_bytes: int = 1 << 20):
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"token dtype must be one of {TOKEN_DTYPES}, got {dtype!r}")
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._bin_tmp = tmp_path_for(bin_path(prefix))
        self._file = open(self._bin_tmp, "wb")
        self._sha = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._buffer_bytes = buffer_bytes
        self.tokens = 0
        self.documents = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one concatenated token array and their lengths (EOS included)."""
        if tokens.dtype != self.dtype:
            tokens = tokens.astype(self.dtype)
        data = tokens.tobytes()
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self.tokens += int(tokens.size)
        self.documents += int(len(lengths))
        if self._pending_bytes >= self._buffer_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._sha.update(data)
            self._file.write(data)
            self._pending.clear()
            self._pending_bytes = 0

    def finish(self) -> ShardInfo:
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        bin_bytes = self._bin_tmp.stat().st_size
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        index = encode_index(lengths, self.dtype.name)
        idx_final = idx_path(self.prefix)
        idx_tmp = tmp_path_for(idx_final)
        with open(idx_tmp, "wb") as f:
            f.write(index)
            f.flush()
            os.fsync(f.fileno())
        # .bin first, .idx last: the .idx is what readers (and megatron-core) open first.
        commit(self._bin_tmp, bin_path(self.prefix))
        commit(idx_tmp, idx_final)
        return ShardInfo(tokens=self.tokens, documents=self.documents, bin_sha256=self._sha.hexdigest(),
                         idx_sha256=hashlib.sha256(index).hexdigest(), bin_bytes=bin_bytes, idx_bytes=len(index))

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._bin_tmp.unlink(missing_ok=True)


def _check_index(where: str, lengths: np.ndarray, pointers: np.ndarray, doc_indices: np.ndarray, itemsize: int,
                 chunk: int = 1 << 22) -> int:
    """Lengths >= 1, pointers = their running byte sum, document indices 0..N; returns the token count.
    Walked in chunks so that checking a 500M-document index needs a few MB, not a copy of it."""
    n, total = int(lengths.size), 0
    for lo in range(0, n, chunk):
        part = np.asarray(lengths[lo: lo + chunk], dtype=np.int64)
        expected = total * itemsize + np.concatenate(([0], np.cumsum(part[:-1]))) * itemsize
        if part.min() < 1 or not np.array_equal(pointers[lo: lo + chunk], expected) \
                or not np.array_equal(doc_indices[lo: lo + part.size], np.arange(lo, lo + part.size)):
            raise ShardError(f"{where}: corrupted index (lengths, pointers or document indices disagree)")
        total += int(part.sum())
    if int(doc_indices[n]) != n:
        raise ShardError(f"{where}: corrupted index (lengths, pointers or document indices disagree)")
    return total


class IndexedShardReader:
    """Memory-mapped reader with structural checks; every problem raises ShardError naming the file."""

    def __init__(self, prefix: str | Path, expected_dtype: str | None = None):
        self.prefix = Path(prefix)
        self.idx_file, self.bin_file = idx_path(prefix), bin_path(prefix)
        for f in (self.idx_file, self.bin_file):
            if not f.is_file():
                raise ShardError(f"{f}: missing shard file")
        where = str(self.idx_file)
        size = self.idx_file.stat().st_size
        with open(self.idx_file, "rb") as f:
            head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[: len(INDEX_HEADER)] != INDEX_HEADER:
            raise ShardError(f"{where}: not a Megatron indexed-dataset index (bad header)")
        version, code, n, n_doc = struct.unpack_from("<QBQQ", head, len(INDEX_HEADER))
        if version != INDEX_VERSION:
            raise ShardError(f"{where}: unsupported index version {version}")
        names = {v: k for k, v in DTYPE_CODES.items()}
        if code not in names or names[code] not in TOKEN_DTYPES:
            raise ShardError(f"{where}: unsupported token dtype code {code}")
        self.dtype = np.dtype(names[code])
        if expected_dtype is not None and self.dtype.name != expected_dtype:
            raise ShardError(f"{where}: token dtype {self.dtype.name}, manifest says {expected_dtype}")
        if n_doc != n + 1 or size != idx_nbytes(n):
            raise ShardError(f"{where}: truncated or inconsistent index ({size} bytes for {n} sequences)")
        # Memory-mapped, not read: at hundreds of millions of documents per data set the index arrays would
        # otherwise be a private copy in every rank; mapped, they are one copy in the page cache.
        off, raw = _HEADER_BYTES, np.memmap(self.idx_file, dtype=np.uint8, mode="r")   # one mapping per file
        self.sequence_lengths = np.frombuffer(raw, dtype="<i4", count=n, offset=off)
        self.sequence_pointers = np.frombuffer(raw, dtype="<i8", count=n, offset=off + 4 * n)
        self.document_indices = np.frombuffer(raw, dtype="<i8", count=n + 1, offset=off + 12 * n)
        self.num_tokens = _check_index(where, self.sequence_lengths, self.sequence_pointers,
                                       self.document_indices, self.dtype.itemsize)
        size = self.bin_file.stat().st_size
        if size != self.num_tokens * self.dtype.itemsize:
            raise ShardError(f"{self.bin_file}: {size} bytes, index expects {self.num_tokens * self.dtype.itemsize}")
        self._tokens = (np.memmap(self.bin_file, dtype=self.dtype, mode="r") if self.num_tokens
                        else np.zeros(0, dtype=self.dtype))

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    @property
    def tokens(self) -> np.ndarray:
        """All token ids of the shard (memory-mapped), documents back to back."""
        return self._tokens

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self._tokens[start: start + int(self.sequence_lengths[i])]
