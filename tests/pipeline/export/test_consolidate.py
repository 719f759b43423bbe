"""Consolidation: a 2-rank ZeRO-2 checkpoint -> one safetensors file that reproduces the single-process
model's logits; bad inputs fail with one line naming the file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import consolidate, save_consolidated
from pipeline.export.load import load_model
from tests.pipeline.train.runs import launch, make_shards

TRAIN = ["train.max_steps=2", "checkpoint.every=2", "eval.every=0", "eval.at_end=false", "log.every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny OE + MTP run trained twice: 2 ranks ZeRO-2 and 1 process ZeRO-0 (the data order and
    the fp32 math do not depend on the rank count, so both end at the same weights up to summation order)."""
    tmp = tmp_path_factory.mktemp("consolidate")
    shards = make_shards(tmp / "shards")
    cfg = ["--config", "configs/run/tiny-cpu.yaml", f"data.path={shards}"]
    launch(cfg + [f"run_dir={tmp / 'z2'}", "deepspeed.zero_stage=2", *TRAIN], world_size=2)
    launch(cfg + [f"run_dir={tmp / 'z0'}", "deepspeed.zero_stage=0", *TRAIN], world_size=1, launcher="python")
    return tmp


def _logits(model, seed=0):
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.logits(ids)


def test_zero2_two_ranks_consolidates_to_single_process_logits(runs):
    state, cfg, meta = consolidate(runs / "z2")
    assert meta["step"] == 2 and cfg.over_encoding.enabled and cfg.over_decoding.mode == "mtp"
    out = save_consolidated(runs / "export_z2", state, cfg, meta)
    assert json.loads((out / "export.json").read_text())["parameters"] == sum(v.numel() for v in state.values())
    exported, _, _ = load_model(out)
    single, _, _ = load_model(runs / "z0" / "checkpoints" / "step_2")     # ZeRO-0 path (module weights)
    torch.testing.assert_close(_logits(exported), _logits(single), atol=2e-5, rtol=1e-4)
    # the export is the checkpoint, bit for bit
    direct, _, _ = load_model(runs / "z2")
    assert torch.equal(_logits(exported), _logits(direct))
    # and it trained: weights moved away from the seed-0 initialisation
    from pipeline.model import build_model
    torch.manual_seed(0)
    assert not torch.allclose(_logits(build_model(cfg).eval()), _logits(exported))


def rewrite_checksums(step_dir) -> None:
    from pipeline.train.checkpoint_manifest import write_manifest
    write_manifest(step_dir, collective=False)


def test_bad_inputs_name_the_file(runs, tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        consolidate(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(runs / "z0" / "checkpoints" / "step_2", broken)
    (broken / "config.yaml").write_text("model:\n  d_model: 48\n  n_heads: 5\n")
    with pytest.raises(CheckpointError, match=r"broken/config.yaml: .* checksums.json records"):
        consolidate(broken)          # a changed file is damage first
    rewrite_checksums(broken)        # a config that is consistent with its checksums but wrong
    with pytest.raises(CheckpointError, match=r"broken/config.yaml: n_heads"):
        consolidate(broken)
    (broken / "config.yaml").write_text((runs / "z0" / "checkpoints" / "step_2" / "config.yaml").read_text()
                                        .replace("n_layers: 2", "n_layers: 3"))
    rewrite_checksums(broken)
    with pytest.raises(CheckpointError, match=r"parameter layers\.2\.\S+ missing"):
        consolidate(broken)
    with pytest.raises(FileExistsError, match="already exists"):
        save_consolidated(tmp_path, {}, None, {})
