"""Our torch-free shard writer/reader is byte-identical to megatron-core's IndexedDataset format."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.data.indexed_dataset import (IndexedShardReader, IndexedShardWriter, ShardError, dtype_for_vocab,
                                           idx_nbytes)


def _docs(dtype: str, n: int = 37, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    high = 65535 if dtype == "uint16" else 100_000
    return [rng.integers(0, high, size=rng.integers(1, 50)).astype(dtype) for _ in range(n)]


def _write(prefix, docs, dtype, batch=5):
    w = IndexedShardWriter(prefix, dtype, buffer_bytes=64)   # tiny buffer: exercise the flush path
    for i in range(0, len(docs), batch):
        part = docs[i:i + batch]
        w.add_documents(np.concatenate(part), np.array([len(d) for d in part]))
    return w.finish()


def test_dtype_choice():
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "int32"
    assert dtype_for_vocab(50280) == "uint16" and dtype_for_vocab(100278) == "int32"


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_bytes_equal_megatron_builder_and_megatron_reads_ours(tmp_path, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    docs = _docs(dtype)
    info = _write(tmp_path / "ours", docs, dtype)
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.dtype(dtype).type)
    for d in docs:
        builder.add_document(torch.from_numpy(d.astype(np.int64)), [len(d)])
    builder.finalize(str(tmp_path / "ref.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes()
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert len(ds) == len(docs) == info.documents and info.idx_bytes == idx_nbytes(len(docs))
    for i, d in enumerate(docs):
        assert np.array_equal(ds[i], d)
    ours = IndexedShardReader(tmp_path / "ours", expected_dtype=dtype)
    assert ours.num_tokens == info.tokens == sum(map(len, docs))
    assert all(np.array_equal(ours[i], d) for i, d in enumerate(docs))


def test_unfinished_writer_leaves_no_final_files(tmp_path):
    w = IndexedShardWriter(tmp_path / "s", "uint16")
    w.add_documents(np.array([1, 2, 3], np.uint16), np.array([3]))
    assert not (tmp_path / "s.bin").exists() and not (tmp_path / "s.idx").exists()
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_reader_rejects_damaged_files(tmp_path):
    _write(tmp_path / "s", _docs("uint16", 5), "uint16")
    idx = (tmp_path / "s.idx").read_bytes()
    (tmp_path / "s.idx").write_bytes(b"XX" + idx[2:])
    with pytest.raises(ShardError, match=r"s\.idx: not a Megatron"):
        IndexedShardReader(tmp_path / "s")
    (tmp_path / "s.idx").write_bytes(idx[:-8])
    with pytest.raises(ShardError, match=r"s\.idx: truncated"):
        IndexedShardReader(tmp_path / "s")
    (tmp_path / "s.idx").write_bytes(idx)
    with pytest.raises(ShardError, match=r"s\.idx: token dtype uint16, manifest says int32"):
        IndexedShardReader(tmp_path / "s", expected_dtype="int32")
    (tmp_path / "s.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"s\.bin: \d+ bytes, index expects"):
        IndexedShardReader(tmp_path / "s")
