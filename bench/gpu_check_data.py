"""A tiny data_prep-format shard folder for the GPU readiness battery (bench/gpu_check.py).

Written through the shard writer and manifest APIs of pipeline.data (the same format data_prep produces), so
the battery trains through the real loader without a corpus or tokenizer on the GPU machine. tests/ is not
importable from bench/, so this is the battery's own copy of the tests' fixture pattern: documents of random
length drawn from few distinct tokens (a model learns them within tens of steps, so "losses fall" is a
meaningful check), each ending with EOS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.indexed_dataset import IndexedShardWriter, dtype_for_vocab
from pipeline.data.manifest import Manifest, ShardRecord, TokenizerRecord, read_manifest, shard_name, write_manifest

VOCAB, EOS = 512, 511


def _documents(n_docs: int, seed: int, distinct: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        body = rng.integers(0, distinct, size=int(rng.integers(3, 60))) * ((VOCAB - 1) // distinct)
        body[body >= EOS] += 1
        docs.append(np.append(body, EOS).astype(np.int64))
    return docs


def write_tiny_shards(folder: str | Path, train_docs: int = 600, val_docs: int = 40) -> Path:
    """Idempotent: a folder that already has a manifest is reused."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        read_manifest(folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(VOCAB)
    records = []
    for split, docs in (("train", _documents(train_docs, 1)), ("val", _documents(val_docs, 2))):
        name = shard_name(split, 0)
        writer = IndexedShardWriter(folder / name, dtype)
        writer.add_documents(np.concatenate(docs), np.array([len(d) for d in docs]))
        info = writer.finish()
        records.append(ShardRecord(split=split, index=0, bin=f"{name}.bin", idx=f"{name}.idx", tokens=info.tokens,
                                   documents=info.documents, bin_sha256=info.bin_sha256, idx_sha256=info.idx_sha256,
                                   bin_bytes=info.bin_bytes, idx_bytes=info.idx_bytes))
    tok = TokenizerRecord(path="gpu-check-synthetic", sha256="cd" * 32, kind="test", vocab_size=VOCAB, eos_id=EOS)
    write_manifest(folder, Manifest(dtype=dtype, tokenizer=tok, shards=records))
    return folder
