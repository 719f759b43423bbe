"""Packing documents into fixed-length training sequences, with a deterministic global shuffle.

Per epoch e, the documents of a split are put in a seeded random order and concatenated into one token
stream (every document already ends with EOS). Sample j of the epoch is the window of seq_len + 1 tokens
starting at j * seq_len (neighbouring windows share one token, as in Megatron-LM), so input_ids = window[:-1]
and the labels are window[1:]. The samples of an epoch are then visited in a second seeded random order.
Everything is a pure function of (seed, epoch, sample), so any rank can compute any sample and a run's
data position is one integer: the number of samples consumed.

Memory: two int64 arrays per document for the current epoch; tokens are read on demand (memmap).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

IGNORE_INDEX = -100


class DocumentSource(Protocol):
    """What packing needs from a split: per-document lengths and a way to read a token range of a document."""

    doc_lengths: np.ndarray  # int64 [num_docs]

    def read(self, doc: int, start: int, length: int) -> np.ndarray: ...


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


class PackedSequences:
    """Sample index -> {input_ids, labels, doc_starts} (numpy, [seq_len] each)."""

    def __init__(self, source: DocumentSource, seq_len: int, seed: int, shuffle: bool = True,
                 stream_id: int = 0):
        self.source, self.seq_len, self.seed, self.shuffle = source, int(seq_len), int(seed), shuffle
        self.stream_id = int(stream_id)  # keeps the train and val orders independent for the same seed
        lengths = np.asarray(source.doc_lengths, dtype=np.int64)
        if lengths.size == 0 or int(lengths.sum()) < self.seq_len + 1:
            raise ValueError(f"split has {int(lengths.sum())} tokens in {lengths.size} documents: "
                             f"fewer than one sequence of seq_len + 1 = {self.seq_len + 1} tokens")
        self._lengths = lengths
        self.total_tokens = int(lengths.sum())
        self.samples_per_epoch = (self.total_tokens - 1) // self.seq_len
        self._epoch = -1
        self._doc_order = self._doc_ends = self._sample_order = None

    def _load_epoch(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        if self.shuffle:
            self._doc_order = _rng(self.seed, self.stream_id, epoch, 0).permutation(self._lengths.size)
            self._sample_order = _rng(self.seed, self.stream_id, epoch, 1).permutation(self.samples_per_epoch)
        else:
            self._doc_order = np.arange(self._lengths.size)
            self._sample_order = None
        self._doc_ends = np.cumsum(self._lengths[self._doc_order])
        self._epoch = epoch

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(int(index), self.samples_per_epoch)
        self._load_epoch(epoch)
        if self._sample_order is not None:
            j = int(self._sample_order[j])
        lo, hi = j * self.seq_len, j * self.seq_len + self.seq_len + 1
        ends = self._doc_ends
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(ends, hi - 1, side="right"))
        window = np.empty(hi - lo, dtype=np.int64)
        starts = np.zeros(hi - lo, dtype=bool)
        # One slice per document touched (a handful per sequence): never a per-token Python loop.
        for k in range(first, last + 1):
            doc_begin = int(ends[k] - self._lengths[self._doc_order[k]])
            a, b = max(lo, doc_begin), min(hi, int(ends[k]))
            window[a - lo:b - lo] = self.source.read(int(self._doc_order[k]), a - doc_begin, b - a)
            if doc_begin >= lo:
                starts[doc_begin - lo] = True
        labels = window[1:].copy()
        labels[starts[1:]] = IGNORE_INDEX  # never predict the first token of the next document
        doc_starts = starts[:-1].copy()
        doc_starts[0] = True
        return {"input_ids": window[:-1], "labels": labels, "doc_starts": doc_starts}

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        rows = [self[int(i)] for i in indices]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
