"""The memory-mapped packing index: the same samples as the in-memory index, built once, and refused with the
folder to delete when it is stale or damaged, or with the key to set when it cannot be written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.config.run import DataConfig
from pipeline.data.index_cache import CachedIndex, IndexCacheError
from pipeline.data.loader import build_loaders
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

VOCAB, EOS = 300, 299


@pytest.fixture
def shards(tmp_path):
    return write_shard_folder(tmp_path / "shards", {"train": random_documents(40, VOCAB, EOS, seed=1),
                                                    "val": random_documents(20, VOCAB, EOS, seed=2)},
                              VOCAB, EOS, docs_per_shard=15)


def loader(folder, max_steps=30, **kw):
    cfg = DataConfig(path=str(folder), seq_len=16, **kw)
    return build_loaders(cfg, VOCAB, seed=4, global_batch=8, micro_batch=4, eval_batches=1, dp_rank=0,
                         dp_size=1, max_steps=max_steps)[0]


def windows(train, steps):
    return [w.tolist() for _ in range(steps) for b in train.next_step() for w in b["input_ids"]]


def cache_of(train) -> CachedIndex:
    return train.sequences.sources[0].index


def test_cached_index_gives_the_in_memory_samples_over_several_epochs(shards):
    memory, cached = loader(shards, index="memory"), loader(shards)
    per_epoch = cached.sequences.sources[0].samples_per_epoch
    steps = 30
    assert steps * 8 > 2 * per_epoch                       # crosses two epoch boundaries
    assert windows(memory, steps) == windows(cached, steps)
    cache = cache_of(cached)
    assert cache.folder.parent == shards / "index_cache"
    built = sorted(p.name for p in cache.folder.glob("epoch-*.json"))
    assert built == [f"epoch-{e:05d}.json" for e in range(-(-steps * 8 // per_epoch))]   # planned at start
    assert not list(cache.folder.glob("*.tmp*"))
    mtimes = {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    loader(shards)                                          # a second start reads, never rebuilds
    assert {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()} == mtimes


def test_an_epoch_past_the_plan_is_built_when_reached(shards):
    train = loader(shards, max_steps=1)
    per_epoch = train.sequences.sources[0].samples_per_epoch
    assert not cache_of(train).has_epoch(1)
    seqs = train.sequences.sources[0]
    assert seqs[per_epoch + 3]["input_ids"].tolist() == loader(shards, index="memory").sequences.sources[0][
        per_epoch + 3]["input_ids"].tolist()
    assert cache_of(train).has_epoch(1)


def test_other_seed_seq_len_or_data_get_their_own_folder(shards, tmp_path):
    a = cache_of(loader(shards)).folder
    b = cache_of(build_loaders(DataConfig(path=str(shards), seq_len=16), VOCAB, seed=5, global_batch=8,
                               micro_batch=4, eval_batches=1, dp_rank=0, dp_size=1, max_steps=2)[0]).folder
    c = cache_of(build_loaders(DataConfig(path=str(shards), seq_len=12), VOCAB, seed=4, global_batch=8,
                               micro_batch=4, eval_batches=1, dp_rank=0, dp_size=1, max_steps=2)[0]).folder
    assert len({a, b, c}) == 3


def test_stale_meta_is_refused_with_the_folder_to_delete(shards):
    cache = cache_of(loader(shards))
    meta = json.loads((cache.folder / "meta.json").read_text())
    meta["total_tokens"] += 1
    (cache.folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCacheError, match=rf"{cache.folder}: stale or damaged index cache \(meta.json was "
                                              r"written for other total_tokens\); delete this folder"):
        windows(loader(shards), 1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_arrays_are_refused(shards, damage):
    cache = cache_of(loader(shards, verify="full"))
    path = cache.folder / "epoch-00000.doc_ends.npy"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[:-8]))
        pattern = "missing or not"
    else:
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))
        pattern = "does not match its sha256"
    with pytest.raises(IndexCacheError, match=rf"stale or damaged index cache \(epoch-00000.doc_ends.npy {pattern}"):
        windows(loader(shards, verify="full"), 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_cache_folder_names_the_key(shards, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(IndexCacheError, match=r"not writable .*set data.index_cache to a writable folder, or "
                                                  r"data.index=memory"):
            loader(shards, index_cache=str(ro / "cache"))
    finally:
        ro.chmod(0o700)


def test_unwritable_cache_folder_names_the_key_as_root_too(shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")      # mkdir under a regular file fails for root as well
    with pytest.raises(IndexCacheError, match=r"not writable .*set data.index_cache"):
        loader(shards, index_cache=str(blocker / "cache"))
