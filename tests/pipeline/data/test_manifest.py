"""Manifest schema: round trip, strict parsing with errors naming the manifest, atomic write."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.indexed_dataset import IndexedShardWriter, ShardError
from pipeline.data.manifest import (Manifest, ShardRecord, TokenizerRecord, iter_documents, load_manifest,
                                    shard_name, write_manifest)


def _make(folder, docs_per_split=None) -> Manifest:
    docs_per_split = docs_per_split or {"train": [[5, 6, 2], [7, 2]], "val": [[9, 9, 9, 2]]}
    shards = []
    for split, docs in docs_per_split.items():
        w = IndexedShardWriter(folder / shard_name(split, 0), "uint16")
        w.add_documents(np.concatenate([np.array(d, np.uint16) for d in docs]), np.array([len(d) for d in docs]))
        info = w.finish()
        shards.append(ShardRecord(split=split, index=0, bin=shard_name(split, 0) + ".bin",
                                  idx=shard_name(split, 0) + ".idx", **vars(info)))
    m = Manifest(dtype="uint16", tokenizer=TokenizerRecord("tok.model", "ab" * 32, "sentencepiece", 10, 2),
                 shards=shards, fingerprint="f" * 64)
    write_manifest(folder, m)
    return m


def test_round_trip_and_totals(tmp_path):
    m = _make(tmp_path)
    back = load_manifest(tmp_path, verify="full")
    assert back == m
    assert back.totals == {"train": {"shards": 1, "documents": 2, "tokens": 5},
                           "val": {"shards": 1, "documents": 1, "tokens": 4},
                           "all": {"shards": 2, "documents": 3, "tokens": 9}}
    assert [d.tolist() for d in iter_documents(tmp_path, "train")] == [[5, 6, 2], [7, 2]]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.update(format_version=99), "unsupported format_version 99"),
    (lambda d: d.update(dtype="float32"), "dtype must be one of"),
    (lambda d: d["shards"][0].update(split="test"), "unknown split 'test'"),
    (lambda d: d["shards"][1].update(index=3), "index 3, expected 0"),
    (lambda d: d["shards"][0].pop("bin_sha256"), "malformed manifest"),
    (lambda d: d["tokenizer"].update(eos_id=10), "eos_id 10 outside vocab_size 10"),
    (lambda d: d.update(format="something-else"), "not a shard manifest"),
])
def test_schema_errors_name_the_manifest(tmp_path, edit, msg):
    _make(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    edit(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="manifest.json: .*" + msg.replace("(", r"\(")):
        load_manifest(tmp_path, verify="none")


def test_record_that_disagrees_with_files(tmp_path):
    _make(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["shards"][0]["documents"] = 3   # still consistent totals after recomputation below
    raw["totals"] = Manifest(dtype="uint16", tokenizer=TokenizerRecord(**raw["tokenizer"]),
                             shards=[ShardRecord(**s) for s in raw["shards"]]).totals
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"train_00000\.idx: .*document count"):
        load_manifest(tmp_path, verify="size")
