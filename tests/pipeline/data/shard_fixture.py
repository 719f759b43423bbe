"""Tiny data_prep-format shard folders for tests, written through the data-prep writer API."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.indexed_dataset import IndexedShardWriter, dtype_for_vocab
from pipeline.data.manifest import Manifest, ShardRecord, TokenizerRecord, shard_name, write_manifest


def random_documents(n_docs: int, vocab_size: int, eos_id: int, seed: int, min_len: int = 3,
                     max_len: int = 60, distinct: int | None = None) -> list[np.ndarray]:
    """Documents of random length whose tokens avoid eos_id, each ending with eos_id. With `distinct`, the
    tokens come from only that many ids (spread over the vocabulary), so a model learns quickly."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        size = int(rng.integers(min_len, max_len))
        if distinct:
            body = rng.integers(0, distinct, size=size) * ((vocab_size - 1) // distinct)
        else:
            body = rng.integers(0, vocab_size - 1, size=size)
        body[body >= eos_id] += 1
        docs.append(np.append(body, eos_id).astype(np.int64))
    return docs


def write_shard_folder(folder: str | Path, splits: dict[str, list[np.ndarray]], vocab_size: int, eos_id: int,
                       docs_per_shard: int = 50, tokenizer_sha256: str = "ab" * 32) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    records = []
    for split, docs in splits.items():
        for index, lo in enumerate(range(0, len(docs), docs_per_shard)):
            part = docs[lo: lo + docs_per_shard]
            name = shard_name(split, index)
            writer = IndexedShardWriter(folder / name, dtype)
            writer.add_documents(np.concatenate(part), np.array([len(d) for d in part]))
            info = writer.finish()
            records.append(ShardRecord(split=split, index=index, bin=f"{name}.bin", idx=f"{name}.idx",
                                       tokens=info.tokens, documents=info.documents, bin_sha256=info.bin_sha256,
                                       idx_sha256=info.idx_sha256, bin_bytes=info.bin_bytes,
                                       idx_bytes=info.idx_bytes))
    tok = TokenizerRecord(path="test-tokenizer", sha256=tokenizer_sha256, kind="test", vocab_size=vocab_size,
                          eos_id=eos_id)
    write_manifest(folder, Manifest(dtype=dtype, tokenizer=tok, shards=records))
    return folder
