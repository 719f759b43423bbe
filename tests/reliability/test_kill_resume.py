"""SIGKILL in the middle of a training step (after some of its micro-batches ran), then resume: the losses
are identical to an uninterrupted run (fp32, CPU), at world size 1 and 2."""
from __future__ import annotations

import pytest

from tests.pipeline.train.test_resume import assert_same_history
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive


def test_sigkill_mid_step_then_resume_is_exact_world_size_1(shards, straight_run, tmp_path):
    run_dir = tmp_path / "killed"
    # Step 5 has 2 micro-batches (global 4 / micro 2): killed before the second, gradients half accumulated.
    killed = drive(run_args(shards, run_dir), {"FAULT_KILL_AT": "5:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "step 4/8" in killed.stdout and "step 5/8" not in killed.stdout
    resumed = drive(run_args(shards, run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_4" in resumed.stdout
    assert_same_history(straight_run, run_dir)


@pytest.mark.multirank
def test_sigkill_one_rank_mid_step_then_resume_is_exact_world_size_2(shards, tmp_path):
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    ok = drive(run_args(shards, straight), world_size=2, launcher="torchrun")
    assert ok.returncode == 0, ok.stderr[-3000:]
    # Rank 1 dies as step 5 starts while rank 0 runs the step and waits for it in the gradient all-reduce;
    # torchrun then ends rank 0.
    killed = drive(run_args(shards, run_dir), {"FAULT_KILL_AT": "5:1", "FAULT_RANK": "1"}, world_size=2,
                   launcher="torchrun")
    assert killed.returncode != 0
    resumed = drive(run_args(shards, run_dir), world_size=2, launcher="torchrun")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_4" in resumed.stdout
    assert_same_history(straight, run_dir)
