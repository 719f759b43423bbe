"""Every run config under configs/run/ loads, passes the trainer's layout checks at the world size it is
written for, and merges with its DeepSpeed JSON; the full-scale ones are bf16 in a cluster layout and the
inspector reports their per-GPU memory (the figures quoted in their headers)."""
from pathlib import Path

import pytest

from launch.inspect_model import inspect_run_config
from pipeline.config.run import load_run_config
from pipeline.train.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps
from pipeline.train.parallel_run import check_run_layout

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "configs" / "run"
# The world size each config is written for (its header's launch command). A new config must be added here.
WORLD = {"tiny-cpu.yaml": 1, "demo.yaml": 1, "olmoe-1.3b.yaml": 8, "olmoe-1.3b-ot12.8m.yaml": 8,
         "olmoe-7b-oe12.8m.yaml": 8, "olmoe-7b-oe12.8m-ep8.yaml": 8, "olmoe-1.3b-ot12.8m-32gpu.yaml": 32}
FULL_SCALE = [name for name, world in WORLD.items() if world > 1]
# config -> (ep, ZeRO stage, per-GPU held / peak GiB as quoted in its header)
CLUSTER_LAYOUTS = {"olmoe-7b-oe12.8m-ep8.yaml": (8, 2, 48.08, 57.74),
                   "olmoe-1.3b-ot12.8m-32gpu.yaml": (8, 2, 7.06, 9.82)}


def test_every_run_config_has_a_world_size():
    assert sorted(p.name for p in RUN.glob("*.yaml")) == sorted(WORLD)


@pytest.mark.parametrize("name", sorted(WORLD))
def test_loads_and_passes_the_layout_checks(name, monkeypatch):
    monkeypatch.chdir(REPO)                              # deepspeed.config_file paths are relative to the repo
    cfg = load_run_config(RUN / name, ["data.path=unused"] if name == "tiny-cpu.yaml" else [])
    world = WORLD[name]
    check_run_layout(cfg, world)
    dp = world // cfg.parallel.tp
    assert gradient_accumulation_steps(cfg, dp) >= 1
    ds = build_deepspeed_config(cfg, dp)                 # the user JSON agrees with the run config
    assert ds["zero_optimization"]["stage"] == cfg.deepspeed.zero_stage
    if name in FULL_SCALE:
        assert cfg.deepspeed.precision == "bf16"


@pytest.mark.parametrize("name", sorted(CLUSTER_LAYOUTS))
def test_cluster_layouts_and_their_inspected_memory(name, monkeypatch):
    monkeypatch.chdir(REPO)
    ep, zero, held, peak = CLUSTER_LAYOUTS[name]
    r = inspect_run_config(str(RUN / name), [], WORLD[name], None)
    assert (r["layout"]["ep"], r["layout"]["zero_stage"], r["layout"]["param_dtype"]) == (ep, zero, "bf16")
    b = r["per_rank_bytes"]
    assert (round(b["held"] / 2**30, 2), round(b["total"] / 2**30, 2)) == (held, peak)
