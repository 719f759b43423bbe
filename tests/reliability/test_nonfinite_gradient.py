"""A non-finite gradient with a finite loss is skipped like a non-finite loss, at every ZeRO stage: no weight
moves (digest), the step is counted (skipped_steps) with a warning, the lr schedule keeps its place, and the
runs of all four stages continue identically. (ZeRO-0 applied the NaN update; ZeRO-1/2/3 skipped it as an
"overflow" without counting it and with the lr schedule one step behind.)"""
from __future__ import annotations

import math

import pytest

from tests.pipeline.train.runs import read_metrics
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive
from tests.reliability.test_nonfinite_loss import digests


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_nan_gradient_with_a_finite_loss_is_skipped(shards, straight_run, tmp_path, stage):
    run_dir, digest = tmp_path / "run", tmp_path / "digest"
    proc = drive(run_args(shards, run_dir, f"deepspeed.zero_stage={stage}"),
                 {"FAULT_NAN_GRAD_STEPS": "3", "FAULT_DIGEST": digest})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: non-finite gradient" in proc.stderr and "update skipped" in proc.stderr, proc.stderr[-2000:]
    if stage < 3:   # ZeRO-3 partitions the module's parameters: the digest would hash empty placeholders
        d = digests(digest)
        assert d[3] == d[2] and d[4] != d[3]
    metrics = {r["step"]: r for r in read_metrics(run_dir)}
    assert math.isfinite(metrics[3]["loss"]) and metrics[2]["skipped_steps"] == 0
    assert all(metrics[s]["skipped_steps"] == 1 for s in range(3, 9))
    assert all(math.isfinite(metrics[s]["loss"]) for s in range(4, 9))
    straight = {r["step"]: r for r in read_metrics(straight_run)}
    assert {s: r["lr"] for s, r in metrics.items()} == {s: r["lr"] for s, r in straight.items()}
    assert metrics[2]["loss"] == pytest.approx(straight[2]["loss"], rel=1e-5)
