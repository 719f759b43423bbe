"""Rotating shard writer for one split: documents in, `{split}_{index:05d}.bin/.idx` files out.

Rotation rule (deterministic, so a resumed run cuts at the same documents): a shard is closed when the next
document would take it past `shard_tokens`; a document longer than that gets a shard of its own. Documents are
never cut, so every shard boundary is a document boundary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.data.indexed_dataset import IndexedShardWriter
from pipeline.data.manifest import ShardRecord, shard_name


class SplitWriter:
    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int, start_index: int,
                 on_finish: Callable[[ShardRecord], None]):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shard_tokens = shard_tokens
        self.next_index = start_index
        self.on_finish = on_finish
        self.records: list[ShardRecord] = []
        self._writer: IndexedShardWriter | None = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents (tokens concatenated, `lengths` per document) in order."""
        i, n, t0 = 0, len(lengths), 0
        ends = np.cumsum(lengths)
        while i < n:
            if self._writer is None:
                self._writer = IndexedShardWriter(self.folder / shard_name(self.split, self.next_index), self.dtype)
            room = self.shard_tokens - self._writer.tokens
            base = ends[i - 1] if i else 0
            fit = int(np.searchsorted(ends[i:] - base, room, side="right"))  # documents that still fit
            if fit == 0 and self._writer.documents == 0:
                fit = 1
            if fit:
                t1 = int(ends[i + fit - 1])
                self._writer.add_documents(tokens[t0:t1], lengths[i:i + fit])
                i, t0 = i + fit, t1
            if i < n:
                self._finish()

    def _finish(self) -> None:
        info = self._writer.finish()
        self._writer = None
        rec = ShardRecord(split=self.split, index=self.next_index,
                          bin=shard_name(self.split, self.next_index) + ".bin",
                          idx=shard_name(self.split, self.next_index) + ".idx", tokens=info.tokens,
                          documents=info.documents, bin_sha256=info.bin_sha256, idx_sha256=info.idx_sha256,
                          bin_bytes=info.bin_bytes, idx_bytes=info.idx_bytes)
        self.next_index += 1
        self.records.append(rec)
        self.on_finish(rec)

    def close(self) -> None:
        """Finish the last, partly filled shard."""
        if self._writer is not None and self._writer.documents:
            self._finish()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
