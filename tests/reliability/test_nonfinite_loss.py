"""NaN / Inf loss: the step is skipped on every rank (weights untouched) and counted (metrics.jsonl and
TensorBoard `skipped_steps`); after train.max_bad_steps consecutive bad steps the run stops with a diagnostic."""
from __future__ import annotations

import math

import pytest

from tests.pipeline.train.runs import read_metrics
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive, error_lines


def digests(path, rank=0) -> dict[int, str]:
    lines = (path.parent / f"{path.name}.rank{rank}").read_text().split("\n")
    return {int(s): h for s, h in (line.split() for line in lines if line)}


def tensorboard_scalars(run_dir, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train.metrics_writer import tensorboard_run_dir

    acc = EventAccumulator(str(tensorboard_run_dir(run_dir)))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_nan_loss_step_is_skipped_and_counted(shards, straight_run, tmp_path):
    run_dir, digest = tmp_path / "run", tmp_path / "digest"
    proc = drive(run_args(shards, run_dir, "log.tensorboard=true"),
                 {"FAULT_NAN_LOSS_STEPS": "3", "FAULT_DIGEST": digest})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: non-finite loss" in proc.stderr and "update skipped" in proc.stderr
    d = digests(digest)
    assert d[3] == d[2]          # the NaN step changed no weight
    assert d[4] != d[3]          # training goes on afterwards
    metrics = {r["step"]: r for r in read_metrics(run_dir)}
    assert metrics[3]["loss"] == "nan" and metrics[2]["skipped_steps"] == 0
    assert all(metrics[s]["skipped_steps"] == 1 for s in range(3, 9))
    assert all(math.isfinite(metrics[s]["loss"]) for s in range(4, 9))
    assert tensorboard_scalars(run_dir, "opt/skipped_steps")[3] == 1.0
    # The schedule keeps its place: the lr of every step is the one of the undisturbed run.
    assert {s: r["lr"] for s, r in metrics.items()} == {r["step"]: r["lr"] for r in read_metrics(straight_run)}


def test_persistent_nan_stops_after_max_bad_steps_with_a_diagnostic(shards, tmp_path):
    run_dir = tmp_path / "run"
    # A NaN weight before step 3: every later loss is NaN, nothing can recover.
    proc = drive(run_args(shards, run_dir, "train.max_bad_steps=3"), {"FAULT_NAN_WEIGHT_AT": "3"}, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "stopping at step 5: 3 consecutive steps with a non-finite loss (train.max_bad_steps=3)" in errors[0]
    assert "last finite step: step 2" in errors[0]
    assert [r["step"] for r in read_metrics(run_dir)][-1] == 5
    assert read_metrics(run_dir)[-1]["skipped_steps"] == 3
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_2"  # no NaN checkpoint (every=2)


@pytest.mark.multirank
def test_nan_on_one_rank_is_skipped_on_every_rank(shards, tmp_path):
    run_dir, digest = tmp_path / "run", tmp_path / "digest"
    proc = drive(run_args(shards, run_dir), {"FAULT_NAN_LOSS_STEPS": "3", "FAULT_RANK": "1",
                                             "FAULT_DIGEST": digest}, world_size=2, launcher="torchrun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d0, d1 = digests(digest, 0), digests(digest, 1)
    assert d0 == d1                # the replicas never diverge
    assert d0[3] == d0[2] and d0[4] != d0[3]
    assert read_metrics(run_dir)[-1]["skipped_steps"] == 1
