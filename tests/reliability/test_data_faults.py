"""Corrupted data and mismatched vocabularies: a clear one-line error naming the file (or both sides of the
mismatch), raised while the loaders are built, i.e. before any training step reads a token."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.config.run import DataConfig
from pipeline.data.indexed_dataset import ShardError
from pipeline.data.loader import DataMismatchError, build_loaders
from tests.pipeline.train.runs import EOS, VOCAB
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive, error_lines

SHARD = "train_00001"


@pytest.fixture
def data(shards, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    return folder


def loaders(folder, vocab=VOCAB, **cfg):
    """What build_trainer does before the first step (default config: data.verify=full)."""
    return build_loaders(DataConfig(path=str(folder), seq_len=32, **cfg), vocab, seed=0, global_batch=4,
                         micro_batch=2, eval_batches=2, dp_rank=0, dp_size=1)


def flip_byte(path, offset) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def edit_manifest(folder, fn) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def first_shard(m):
    return next(s for s in m["shards"] if s["bin"] == f"{SHARD}.bin")


CORRUPTIONS = {
    "flipped_byte_bin": (lambda d: flip_byte(d / f"{SHARD}.bin", 101), f"{SHARD}.bin", "sha256 mismatch"),
    "flipped_byte_idx": (lambda d: flip_byte(d / f"{SHARD}.idx", 40), f"{SHARD}.idx", "sha256 mismatch"),
    "truncated_bin": (lambda d: (d / f"{SHARD}.bin").write_bytes((d / f"{SHARD}.bin").read_bytes()[:-7]),
                      f"{SHARD}.bin", "truncated"),
    "missing_shard": (lambda d: (d / f"{SHARD}.idx").unlink(), f"{SHARD}.idx", "missing shard file"),
    "manifest_edited_tokens": (lambda d: edit_manifest(d, lambda m: first_shard(m).update(tokens=first_shard(m)["tokens"] + 1)),
                               "manifest.json", "totals disagree"),
    "manifest_edited_sha": (lambda d: edit_manifest(d, lambda m: first_shard(m).update(bin_sha256="0" * 64)),
                            f"{SHARD}.bin", "sha256 mismatch"),
    "manifest_shard_dropped": (lambda d: edit_manifest(d, lambda m: m["shards"].remove(first_shard(m))),
                               "manifest.json", "expected 1"),
    "manifest_not_json": (lambda d: (d / "manifest.json").write_text('{"format": '), "manifest.json", "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_data_is_a_clear_error_naming_the_file(data, name):
    corrupt, file_name, why = CORRUPTIONS[name]
    corrupt(data)
    with pytest.raises((ShardError, DataMismatchError)) as err:
        loaders(data)
    msg = str(err.value)
    assert "\n" not in msg and str(data / file_name) in msg and why in msg, msg


def test_flipped_byte_stops_launch_before_any_step(shards, data, tmp_path):
    flip_byte(data / f"{SHARD}.bin", 101)
    proc = drive(run_args(data, tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and str(data / f"{SHARD}.bin") in errors[0], proc.stderr[-3000:]
    assert "step 1/" not in proc.stdout and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_data_vocabulary_larger_than_the_model_is_an_error(data):
    with pytest.raises(DataMismatchError, match=r"tokenizer vocab_size 512 exceeds the model's model.vocab_size 500"):
        loaders(data, vocab=500)


def test_data_from_another_tokenizer_than_configured_is_an_error(data):
    with pytest.raises(DataMismatchError, match=r"differs from the run's data.tokenizer_sha256"):
        loaders(data, tokenizer_sha256="cd" * 32)


def test_resuming_on_data_from_another_tokenizer_is_an_error(data, tmp_path):
    other = write_shard_folder(tmp_path / "other", {"train": random_documents(300, VOCAB, EOS, seed=1)}, VOCAB,
                               EOS, tokenizer_sha256="cd" * 32)
    saved = loaders(data)[0].state_dict()
    with pytest.raises(DataMismatchError, match=r"checkpoint was trained on data from tokenizer abab"):
        loaders(other, val_split=None)[0].load_state_dict(saved)   # `other` has no val split


def test_token_ids_beyond_the_tokenizer_vocabulary_are_caught_by_the_checksum(data):
    """A token id >= vocab written into a shard (e.g. by a tool using another tokenizer) changes its bytes."""
    path = data / f"{SHARD}.bin"
    raw = bytearray(path.read_bytes())
    raw[0:2] = (VOCAB + 7).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="sha256 mismatch"):
        loaders(data)
