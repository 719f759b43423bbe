"""The packing index of a training source, built once and memory-mapped by every rank.

In memory, an epoch's index (pipeline/data/packing.py: document order, cumulative ends, sample order) costs
every rank ~20 bytes per document and a rebuild at each epoch: 100M documents took 3.35 GB and 13 s per
rank. Here it is written once per (source content, seq_len, seed, stream, epoch) as .npy files and opened
with mmap, so all ranks of a node share one copy in the page cache and start in milliseconds (Megatron's
GPTDataset and OLMo-core cache their indices the same way).

Layout: <cache>/<key>/meta.json (what the index was built for) and, per epoch e, epoch-0000e.{doc_order,
doc_ends,sample_order}.npy plus epoch-0000e.json (sizes and sha256 of the arrays), written last: an epoch
exists only once its json does. The key is a hash of the fingerprint, so data re-prepared in place, another
seed or seq_len gets a new folder and never reads a stale index; a folder whose meta.json or arrays do not
match what its key promises is refused with the path to delete.

Who builds: local rank 0 of every node (the cache may be node-local or shared; a shared folder may see two
identical builds, each file published by an atomic rename), then all ranks meet at a barrier.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np

from pipeline.data.atomic_io import atomic_write_bytes
from pipeline.data.manifest import sha256_file
from pipeline.data.packing import DocumentSource, EpochIndex, fill_epoch_index, index_shapes

INDEX_FORMAT = 1
META = "meta.json"


class IndexCacheError(RuntimeError):
    """The index cache folder is not writable, incomplete or does not match its key; names the folder."""


def content_fingerprint(manifest, split: str) -> str:
    """sha256 over the split's shard records: any re-prepared shard changes it."""
    h = hashlib.sha256()
    for r in manifest.split_shards(split):
        h.update(f"{r.bin}:{r.bin_sha256}:{r.idx_sha256}:{r.documents}:{r.tokens}\n".encode())
    return h.hexdigest()


class CachedIndex:
    """EpochIndex provider backed by the cache folder (see the module docstring)."""

    def __init__(self, cache_root: str | Path, fingerprint: dict, source: DocumentSource, seq_len: int,
                 seed: int, stream: tuple[int, ...], shuffle: bool, verify: str = "size"):
        self.fingerprint = {"format": INDEX_FORMAT, **fingerprint, "seq_len": int(seq_len), "seed": int(seed),
                            "stream": list(stream), "shuffle": bool(shuffle), "num_docs": int(source.num_docs),
                            "total_tokens": int(source.total_tokens)}
        key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(cache_root) / key
        self.source, self.seq_len, self.seed, self.stream, self.shuffle = source, seq_len, seed, stream, shuffle
        self.verify = verify
        self.shapes = index_shapes(source.num_docs, source.total_tokens, seq_len, shuffle)
        self._epoch, self._index = -1, None

    # ---- building (local rank 0) -------------------------------------------------------------------------
    def _writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".probe-{socket.gethostname()}-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise IndexCacheError(f"{self.folder}: index cache folder is not writable ({e.strerror}); set "
                                  f"data.index_cache to a writable folder, or data.index=memory") from None

    def _epoch_json(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:05d}.json"

    def _array_path(self, epoch: int, name: str) -> Path:
        return self.folder / f"epoch-{epoch:05d}.{name}.npy"

    def build(self, epochs: int, lengths=None) -> list[int]:
        """Write every epoch < `epochs` that is not complete yet; returns the epochs built."""
        self._writable()
        meta = self.folder / META
        if meta.is_file():
            self._check_meta()
        else:
            atomic_write_bytes(meta, json.dumps(self.fingerprint, indent=1, sort_keys=True).encode())
        built = []
        for epoch in range(epochs):
            if self._epoch_json(epoch).is_file():
                continue
            if lengths is None:
                lengths = np.asarray(self.source.doc_lengths())
            self._build_epoch(epoch, lengths)
            built.append(epoch)
        return built

    def _build_epoch(self, epoch: int, lengths: np.ndarray) -> None:
        tag = f".tmp-{socket.gethostname()}-{os.getpid()}"
        tmp = {name: Path(f"{self._array_path(epoch, name)}{tag}") for name in self.shapes}
        try:
            arrays = {name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=dtype, shape=shape)
                      for name, (shape, dtype) in self.shapes.items()}
            out = EpochIndex(arrays["doc_order"], arrays["doc_ends"], arrays.get("sample_order"))
            fill_epoch_index(lengths, self.seq_len, self.seed, self.stream, epoch, self.shuffle, out)
            record = {}
            for name, array in arrays.items():
                array.flush()
                with open(tmp[name], "rb+") as f:
                    os.fsync(f.fileno())
                del array
                record[name] = {"bytes": tmp[name].stat().st_size, "sha256": sha256_file(tmp[name])}
            arrays.clear()
            for name in self.shapes:
                os.replace(tmp[name], self._array_path(epoch, name))
            atomic_write_bytes(self._epoch_json(epoch), json.dumps(record, indent=1).encode())
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)

    # ---- reading (every rank) ----------------------------------------------------------------------------
    def _stale(self, why: str) -> IndexCacheError:
        return IndexCacheError(f"{self.folder}: stale or damaged index cache ({why}); delete this folder and "
                               f"start again (it is rebuilt from the data)")

    def _check_meta(self) -> None:
        try:
            saved = json.loads((self.folder / META).read_text())
        except (OSError, ValueError) as e:
            raise self._stale(f"{META} unreadable: {e}") from None
        if saved != self.fingerprint:
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise self._stale(f"{META} was written for other {', '.join(diff)}")

    def has_epoch(self, epoch: int) -> bool:
        return self._epoch_json(epoch).is_file()

    def get(self, epoch: int) -> EpochIndex:
        if epoch == self._epoch:
            return self._index
        if not self.has_epoch(epoch):
            # Not planned at start (e.g. train.max_steps grew): this rank builds it. Safe when several do: each
            # writes its own temporary files and publishes identical bytes by rename.
            self.build(epoch + 1)
        self._check_meta()
        try:
            record = json.loads(self._epoch_json(epoch).read_text())
        except (OSError, ValueError) as e:
            raise self._stale(f"{self._epoch_json(epoch).name} unreadable: {e}") from None
        arrays = {}
        for name, (shape, dtype) in self.shapes.items():
            path = self._array_path(epoch, name)
            want = record.get(name) or {}
            if not path.is_file() or path.stat().st_size != want.get("bytes"):
                raise self._stale(f"{path.name} missing or not {want.get('bytes')} bytes")
            if self.verify == "full" and sha256_file(path) != want.get("sha256"):
                raise self._stale(f"{path.name} does not match its sha256")
            try:
                array = np.load(path, mmap_mode="r")
            except ValueError as e:
                raise self._stale(f"{path.name}: {e}") from None
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise self._stale(f"{path.name} holds {array.dtype}{list(array.shape)}, expected "
                                  f"{np.dtype(dtype)}{list(shape)}")
            arrays[name] = array
        if int(arrays["doc_ends"][-1]) != self.source.total_tokens:
            raise self._stale(f"doc_ends ends at {int(arrays['doc_ends'][-1])}, the data has "
                              f"{self.source.total_tokens} tokens")
        self._epoch = epoch
        self._index = EpochIndex(arrays["doc_order"], arrays["doc_ends"], arrays.get("sample_order"))
        return self._index
