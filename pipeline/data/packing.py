"""Packing documents into fixed-length training sequences, with a deterministic global shuffle.

Per epoch e, the documents of a split are put in a seeded random order and concatenated into one token
stream (every document already ends with EOS). Sample j of the epoch is the window of seq_len + 1 tokens
starting at j * seq_len (neighbouring windows share one token, as in Megatron-LM), so input_ids = window[:-1]
and the labels are window[1:]. The samples of an epoch are then visited in a second seeded random order.
Everything is a pure function of (seed, stream, epoch, sample), so any rank can compute any sample and a
run's data position is one integer: the number of samples consumed.

An epoch's index is three arrays (`EpochIndex`): the document order, the cumulative token ends of the
documents in that order, and the sample order. `epoch_index` computes them; `MemoryIndex` keeps the current
epoch's in memory (small data, validation); pipeline/data/index_cache.py stores them once, memory-mapped
beside the data, for runs whose index would not fit per rank. Tokens are always read on demand (memmap).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

IGNORE_INDEX = -100


class DocumentSource(Protocol):
    """What packing needs from a split: its size, per-document lengths (only to build an index) and a way to
    read a token range of a document."""

    num_docs: int
    total_tokens: int

    def doc_lengths(self) -> np.ndarray: ...

    def read(self, doc: int, start: int, length: int) -> np.ndarray: ...


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


@dataclass
class EpochIndex:
    doc_order: np.ndarray      # [num_docs] document ids in packing order
    doc_ends: np.ndarray       # [num_docs] int64 cumulative token count after each document in that order
    sample_order: np.ndarray | None  # [samples_per_epoch] visiting order of the windows; None = in order


def index_dtype(n: int):
    """int32 while it holds every value (halves the index at 500M documents), else int64."""
    return np.int32 if n < 2**31 else np.int64


def fill_epoch_index(lengths: np.ndarray, seq_len: int, seed: int, stream: tuple[int, ...], epoch: int,
                     shuffle: bool, out: EpochIndex, chunk: int = 1 << 24) -> None:
    """Write epoch `epoch`'s index into `out` (arrays in memory or memory-mapped files, see `new_epoch_index`).
    The running sum is taken in chunks so that building into files needs no second full-size array."""
    n = int(lengths.size)
    if shuffle:
        out.doc_order[:] = _rng(seed, *stream, epoch, 0).permutation(n)
        out.sample_order[:] = _rng(seed, *stream, epoch, 1).permutation(out.sample_order.size)
    else:
        out.doc_order[:] = np.arange(n)
    carry = 0
    for lo in range(0, n, chunk):
        part = np.cumsum(lengths[out.doc_order[lo: lo + chunk]], dtype=np.int64)
        part += carry
        out.doc_ends[lo: lo + chunk] = part
        carry = int(part[-1])


def index_shapes(num_docs: int, total_tokens: int, seq_len: int, shuffle: bool) -> dict:
    """name -> (shape, dtype) of an epoch's arrays (sample_order absent when unshuffled)."""
    samples = (total_tokens - 1) // seq_len
    shapes = {"doc_order": ((num_docs,), index_dtype(num_docs)), "doc_ends": ((num_docs,), np.int64)}
    if shuffle:
        shapes["sample_order"] = ((samples,), index_dtype(samples))
    return shapes


def epoch_index(lengths: np.ndarray, seq_len: int, seed: int, stream: tuple[int, ...], epoch: int,
                shuffle: bool) -> EpochIndex:
    shapes = index_shapes(int(lengths.size), int(lengths.sum()), seq_len, shuffle)
    arrays = {k: np.empty(shape, dtype) for k, (shape, dtype) in shapes.items()}
    out = EpochIndex(arrays["doc_order"], arrays["doc_ends"], arrays.get("sample_order"))
    fill_epoch_index(lengths, seq_len, seed, stream, epoch, shuffle, out)
    return out


class MemoryIndex:
    """The current epoch's index, computed in memory when the epoch changes (32 bytes per document)."""

    def __init__(self, source: DocumentSource, seq_len: int, seed: int, stream: tuple[int, ...], shuffle: bool):
        self.source, self.seq_len, self.seed, self.stream, self.shuffle = source, seq_len, seed, stream, shuffle
        self._lengths = None
        self._epoch, self._index = -1, None

    def get(self, epoch: int) -> EpochIndex:
        if epoch != self._epoch:
            if self._lengths is None:
                self._lengths = np.asarray(self.source.doc_lengths(), dtype=np.int64)
            self._index = epoch_index(self._lengths, self.seq_len, self.seed, self.stream, epoch, self.shuffle)
            self._epoch = epoch
        return self._index


class PackedSequences:
    """Sample index -> {input_ids, labels, doc_starts} (numpy, [seq_len] each).

    `stream` keeps independent orders for the same seed: train vs val, and one per mixture source.
    `index` provides each epoch's EpochIndex (default: MemoryIndex)."""

    def __init__(self, source: DocumentSource, seq_len: int, seed: int, shuffle: bool = True,
                 stream_id: int | tuple[int, ...] = 0, index=None):
        self.source, self.seq_len, self.seed, self.shuffle = source, int(seq_len), int(seed), shuffle
        self.stream = (stream_id,) if isinstance(stream_id, int) else tuple(stream_id)
        self.total_tokens = int(source.total_tokens)
        if source.num_docs == 0 or self.total_tokens < self.seq_len + 1:
            raise ValueError(f"split has {self.total_tokens} tokens in {source.num_docs} documents: "
                             f"fewer than one sequence of seq_len + 1 = {self.seq_len + 1} tokens")
        self.samples_per_epoch = (self.total_tokens - 1) // self.seq_len
        self.index = index if index is not None else MemoryIndex(source, self.seq_len, self.seed, self.stream,
                                                                 shuffle)

    def locate(self, index: int) -> list[tuple[int, int, int, int]]:
        """The pieces of sample `index`: (document, start in the document, length, offset in the window)."""
        epoch, j = divmod(int(index), self.samples_per_epoch)
        ix = self.index.get(epoch)
        if ix.sample_order is not None:
            j = int(ix.sample_order[j])
        lo, hi = j * self.seq_len, j * self.seq_len + self.seq_len + 1
        ends = ix.doc_ends
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(ends, hi - 1, side="right"))
        pieces = []
        # One slice per document touched (a handful per sequence): never a per-token Python loop.
        for k in range(first, last + 1):
            doc_begin = int(ends[k - 1]) if k else 0
            a, b = max(lo, doc_begin), min(hi, int(ends[k]))
            pieces.append((int(ix.doc_order[k]), a - doc_begin, b - a, a - lo))
        return pieces

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = self.seq_len + 1
        window = np.empty(n, dtype=np.int64)
        starts = np.zeros(n, dtype=bool)
        for doc, start, length, at in self.locate(index):
            window[at:at + length] = self.source.read(doc, start, length)
            if start == 0:
                starts[at] = True
        labels = window[1:].copy()
        labels[starts[1:]] = IGNORE_INDEX  # never predict the first token of the next document
        doc_starts = starts[:-1].copy()
        doc_starts[0] = True
        return {"input_ids": window[:-1], "labels": labels, "doc_starts": doc_starts}

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        rows = [self[int(i)] for i in indices]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
