"""model.vocab_size / padded_vocab_size default from the data's manifest when the model section omits them."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config.base import ConfigError
from pipeline.config.run import load_run_config
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

MODEL = {"name": "t", "d_model": 32, "n_layers": 1, "n_heads": 2, "n_experts": 2, "top_k": 1, "max_seq_len": 64}


def run_yaml(tmp_path, model: dict, data: dict) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": model, "run_dir": str(tmp_path / "run"), "data": {"seq_len": 32, **data}}))
    return str(path)


@pytest.fixture
def shards(tmp_path):
    docs = random_documents(5, 1000, 999, seed=0)
    return write_shard_folder(tmp_path / "d", {"train": docs, "val": docs}, vocab_size=1000, eos_id=999)


def test_vocab_comes_from_the_manifest_and_is_padded_to_128(tmp_path, shards):
    cfg = load_run_config(run_yaml(tmp_path, MODEL, {"path": str(shards)}))
    assert (cfg.model.vocab_size, cfg.model.padded_vocab_size) == (1000, 1024)
    mix = load_run_config(run_yaml(tmp_path, MODEL, {"sources": [{"name": "a", "path": str(shards)}]}))
    assert mix.model.vocab_size == 1000


def test_given_values_win(tmp_path, shards):
    cfg = load_run_config(run_yaml(tmp_path, {**MODEL, "vocab_size": 1200}, {"path": str(shards)}))
    assert cfg.model.vocab_size == 1200
    cfg = load_run_config(run_yaml(tmp_path, MODEL, {"path": str(shards)}), ["model.padded_vocab_size=1152"])
    assert (cfg.model.vocab_size, cfg.model.padded_vocab_size) == (1000, 1152)


def test_unreadable_manifest_names_the_key_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.vocab_size: not given, and .*nowhere/manifest.json"):
        load_run_config(run_yaml(tmp_path, MODEL, {"path": str(tmp_path / "nowhere")}))
