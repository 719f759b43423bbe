"""Corruption is caught by `verify` and by the loader-side `load_manifest`, naming the bad file."""
from __future__ import annotations

import json

import pytest

from pipeline.data.indexed_dataset import ShardError
from pipeline.data.manifest import load_manifest
from tests.data_prep.conftest import make_docs, run_cli, shard_ok


@pytest.fixture
def shards(tmp_path, sp_model):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(300, seed=1)), encoding="utf-8")
    out = tmp_path / "out"
    shard_ok(corpus, "-o", out, "-t", sp_model, "--shard-tokens", 4000, "--val-fraction", 0.1)
    return out


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_clean_folder_verifies(shards):
    rc, out, err = run_cli("verify", "--no-progress", shards)
    assert rc == 0 and "OK (full)" in out, err


@pytest.mark.parametrize("name,offset", [("train_00001.bin", 7), ("val_00000.bin", 0), ("train_00002.idx", 40),
                                         ("train_00000.idx", 3)])
def test_flipped_byte_is_named_by_verify_and_loader(shards, name, offset):
    _flip(shards / name, offset)
    rc, _, err = run_cli("verify", "--no-progress", shards)
    assert rc == 2 and name in err and err.count("\n") == 1, err
    with pytest.raises(ShardError, match=name):
        load_manifest(shards, verify="full")


def test_truncated_and_missing_shards_are_caught_by_size_check(shards):
    bin_file = shards / "train_00003.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:-2])
    with pytest.raises(ShardError, match="train_00003.bin.*bytes"):
        load_manifest(shards, verify="size")
    (shards / "val_00000.idx").unlink()
    rc, _, err = run_cli("verify", "--quick", "--no-progress", shards)
    assert rc == 2 and "train_00003.bin" in err   # the first bad file in manifest order


def test_missing_shard_and_edited_manifest(shards):
    (shards / "train_00001.idx").unlink()
    with pytest.raises(ShardError, match="train_00001.idx: missing"):
        load_manifest(shards, verify="size")
    m = json.loads((shards / "manifest.json").read_text())
    m["shards"][0]["tokens"] += 1
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="manifest.json: totals disagree"):
        load_manifest(shards, verify="none")
    (shards / "manifest.json").write_text("{not json")
    rc, _, err = run_cli("verify", shards)
    assert rc == 2 and "manifest.json: not valid JSON" in err
    (shards / "manifest.json").unlink()
    rc, _, err = run_cli("verify", shards)
    assert rc == 2 and "manifest.json: missing" in err
