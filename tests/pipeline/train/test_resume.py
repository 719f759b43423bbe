"""Exact resume: 2N steps straight == N steps, stop/kill, resume for the rest (identical fp32 losses), for
world size 1 (plain python) and world size 2 with ZeRO-2 (torchrun for the interrupted runs, the deepspeed
launcher for the straight one). Also: a real SIGKILL at an arbitrary moment, and the checkpoint layout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.multirank import REPO
from tests.pipeline.train.runs import TINY_RUN, launch, make_shards, read_metrics, step_losses

STEPS = 8


def args(shards, run_dir, *extra):
    return ["--config", str(TINY_RUN), f"data.path={shards}", f"run_dir={run_dir}", f"train.max_steps={STEPS}",
            "checkpoint.every=4", "eval.every=4", "log.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("resume") / "shards")


def assert_same_history(straight: Path, resumed: Path) -> None:
    a, b = step_losses(straight), step_losses(resumed)
    assert sorted(a) == list(range(1, STEPS + 1))
    steps = [r["step"] for r in read_metrics(resumed)]
    assert steps == sorted(set(steps)), f"duplicate or unordered steps after resume: {steps}"
    assert a == b, {s: (a[s], b.get(s)) for s in a if a[s] != b.get(s)}
    va = [r["val_loss"] for r in read_metrics(straight) if "val_loss" in r]
    vb = [r["val_loss"] for r in read_metrics(resumed) if "val_loss" in r]
    assert va == vb and len(va) == 2


def test_world_size_1_stop_and_resume_is_exact(shards, tmp_path):
    launch(args(shards, tmp_path / "straight"), launcher="python")
    # "Killed" after step 6: the last checkpoint is step 4, steps 5-6 are lost and recomputed.
    first = launch(args(shards, tmp_path / "resumed", "train.hard_stop_step=6", "checkpoint.save_at_end=false"),
                   launcher="python")
    assert "step 6/8" in first.stdout and "step 7/8" not in first.stdout
    second = launch(args(shards, tmp_path / "resumed"), launcher="python")
    assert "resumed from" in second.stdout and "step_4" in second.stdout
    assert_same_history(tmp_path / "straight", tmp_path / "resumed")
    # the cost of the step-4 save is in the record of step 5, and only there
    records = {r["step"]: r for r in read_metrics(tmp_path / "straight")}
    cost = {k: v for k, v in records[5].items() if k.startswith("checkpoint/")}
    assert cost["checkpoint/saved_step"] == 4 and cost["checkpoint/save_s"] > 0, cost
    assert cost["checkpoint/bytes"] > cost["checkpoint/layout_free_bytes"] > 0, cost
    assert not any(k.startswith("checkpoint/") for s in (4, 6, 7, 8) for k in records[s])

    ckpts = tmp_path / "resumed" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_8"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_4", "step_8"]  # keep_last: 2
    state = json.loads((ckpts / "step_8" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["data"]["consumed_samples"] == 8 * 4
    assert (ckpts / "step_8" / "config.yaml").is_file() and (ckpts / "step_8" / "rng" / "rank_00000.pt").is_file()


def test_sigkill_at_any_moment_then_resume_is_exact(shards, tmp_path):
    straight = tmp_path / "straight"
    launch(args(shards, straight, "checkpoint.every=2"), launcher="python")
    run_dir = tmp_path / "killed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "launch" / "train.py"),
                             *args(shards, run_dir, "checkpoint.every=2")], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "latest").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    launch(args(shards, run_dir, "checkpoint.every=2"), launcher="python")
    a, b = step_losses(straight), step_losses(run_dir)
    assert a == b


@pytest.mark.multirank
def test_world_size_2_zero2_stop_and_resume_is_exact(shards, tmp_path):
    zero2 = ["deepspeed.zero_stage=2"]
    out = launch(args(shards, tmp_path / "straight", *zero2), world_size=2, launcher="deepspeed")
    assert "step 8/8" in out.stdout
    launch(args(shards, tmp_path / "resumed", *zero2, "train.hard_stop_step=6", "checkpoint.save_at_end=false"),
           world_size=2, launcher="torchrun")
    launch(args(shards, tmp_path / "resumed", *zero2), world_size=2, launcher="torchrun")
    assert_same_history(tmp_path / "straight", tmp_path / "resumed")
    rngs = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints" / "step_8" / "rng").iterdir())
    assert rngs == ["rank_00000.pt", "rank_00001.pt"]
