"""Unit tests: lr schedule, parameter groups, DeepSpeed config merging, run-config loading, checkpoint lookup."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.config.base import ConfigError
from pipeline.config.run import OptimConfig, ScheduleConfig, load_run_config
from pipeline.train.checkpoint import LATEST, find_latest_checkpoint, resume_candidates
from pipeline.train.checkpoint_manifest import MANIFEST
from pipeline.train.deepspeed_config import build_deepspeed_config
from pipeline.train.lr_schedule import WarmupDecaySchedule, lr_factor
from pipeline.train.param_groups import build_param_groups
from tests.pipeline.train.runs import TINY_RUN


def cfg_with(*overrides):
    return load_run_config(TINY_RUN, ["data.path=/nonexistent", *overrides])


def test_warmup_then_cosine_to_floor():
    s = ScheduleConfig(kind="cosine", warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, s) == pytest.approx(0.1) and lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(60, s) == pytest.approx(0.1 + 0.9 * 0.5)          # half-way down the cosine
    assert lr_factor(110, s) == pytest.approx(0.1) and lr_factor(500, s) == pytest.approx(0.1)
    lin = ScheduleConfig(kind="linear", warmup_steps=0, decay_steps=100, min_lr_ratio=0.0)
    assert lr_factor(50, lin) == pytest.approx(0.5)
    assert all(lr_factor(k, s) >= lr_factor(k + 1, s) for k in range(10, 200))


def test_schedule_scales_every_group_and_round_trips():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 5.0}])
    s = ScheduleConfig(warmup_steps=4, decay_steps=20, min_lr_ratio=0.1)
    sched = WarmupDecaySchedule(opt, s)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 1.25])
    for _ in range(7):
        opt.step()
        sched.step()
    f = lr_factor(7, s)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([f, 5 * f])
    state = json.loads(json.dumps(sched.state_dict()))  # plain numbers only
    opt2 = torch.optim.AdamW([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 5.0}])
    sched2 = WarmupDecaySchedule(opt2, s)
    sched2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([f, 5 * f])


def test_param_groups_on_the_real_model():
    from pipeline.model import build_model

    cfg = cfg_with()
    model = build_model(cfg.model)
    optim = OptimConfig(lr=1e-3, weight_decay=0.1, oe_lr_multiplier=5.0, oe_weight_decay=0.0)
    groups = {g["name"]: g for g in build_param_groups(model, optim)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert sum(len(v) for v in members.values()) == len(names)  # every parameter exactly once
    assert members["oe_tables"] == {"over_encoding.table"}
    assert groups["oe_tables"]["lr"] == pytest.approx(5e-3) and groups["oe_tables"]["weight_decay"] == 0.0
    assert members["embedding"] == {"embed.weight"} and groups["embedding"]["weight_decay"] == 0.0
    assert all("norm" in n for n in members["no_decay"]) and "norm.weight" in members["no_decay"]
    assert "lm_head.weight" in members["decay"] and "over_encoding.proj.weight" in members["decay"]
    assert groups["decay"]["weight_decay"] == 0.1
    with_emb = {g["name"]: g for g in build_param_groups(model, OptimConfig(embedding_weight_decay=True))}
    assert with_emb["embedding"]["weight_decay"] == with_emb["decay"]["weight_decay"]


def test_deepspeed_config_fills_what_the_user_json_leaves_out(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}, "train_batch_size": "auto",
                                "comms_logger": {"enabled": False}}))
    ds = build_deepspeed_config(cfg_with("deepspeed.zero_stage=2", f"deepspeed.config_file={user}"), world_size=2)
    assert ds["zero_optimization"] == {"overlap_comm": True, "stage": 2}
    assert ds["train_batch_size"] == 4 and ds["gradient_accumulation_steps"] == 1
    assert ds["comms_logger"] == {"enabled": False} and ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("content,match", [
    ({"zero_optimization": {"stage": 3}}, r"ds.json: zero_optimization.stage=3 conflicts with the run config"),
    ({"optimizer": {"type": "AdamW"}}, r"ds.json: 'optimizer' is not supported"),
    ({"fp16": {"enabled": True}}, r"fp16.enabled is not supported"),
])
def test_deepspeed_config_conflicts_are_errors(tmp_path, content, match):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=match):
        build_deepspeed_config(cfg_with(f"deepspeed.config_file={user}"), world_size=1)


def test_global_batch_must_divide_over_ranks():
    with pytest.raises(ConfigError, match=r"train.global_batch_size: 4 is not a multiple .* 2 x 3 = 6"):
        build_deepspeed_config(cfg_with(), world_size=3)


def test_run_config_model_reference_and_overrides():
    cfg = cfg_with("model.d_model=96", "optim.lr=1e-3", "schedule.warmup_steps=2")
    assert cfg.model.name == "tiny-olmoe-ot" and cfg.model.d_model == 96 and cfg.model.over_encoding.enabled
    assert cfg.optim.lr == 1e-3 and cfg.schedule.decay_steps == cfg.train.max_steps
    other = cfg_with("model=configs/model/tiny-dense.yaml")
    assert other.model.mlp == "dense"
    with pytest.raises(ConfigError, match="unknown key train.max_step "):
        cfg_with("train.max_step=3")
    with pytest.raises(ConfigError, match="model config file 'nope.yaml' not found"):
        cfg_with("model=nope.yaml")
    with pytest.raises(ConfigError, match="data.path: is required"):
        load_run_config(TINY_RUN, [])


def test_latest_checkpoint_ignores_partial_writes(tmp_path):
    root = tmp_path / "checkpoints"
    assert find_latest_checkpoint(tmp_path) is None and resume_candidates("auto", tmp_path) == []
    for step in (2, 4):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / MANIFEST).write_text("{}")
    (root / ".tmp_step_6").mkdir()                  # killed while saving
    (root / "step_8").mkdir()                       # no manifest: never complete
    assert find_latest_checkpoint(tmp_path) == root / "step_4"      # no pointer: newest complete
    (root / LATEST).write_text("step_2\n")
    assert find_latest_checkpoint(tmp_path) == root / "step_2"      # the pointer wins
    assert resume_candidates("auto", tmp_path) == [root / "step_2", root / "step_4"]   # then the fallbacks
    assert resume_candidates("never", tmp_path) == []
    with pytest.raises(FileNotFoundError, match="step_8 is not a complete checkpoint"):
        resume_candidates(str(root / "step_8"), tmp_path)
