"""Automatic restart: a rank SIGKILLed mid-run under `torchrun --max-restarts 1` makes torchrun restart every
rank; the new incarnation takes over the run_dir lock, resumes from the last checkpoint and finishes, and the
job exits 0 by itself. Both rendezvous kinds: static (--master_addr/--master_port) and c10d (what
launch/slurm.sbatch uses). The history is the uninterrupted 2-rank run's: identical fp32 losses, one
metrics.jsonl record and one TensorBoard `loss` scalar per step (the step the killed incarnation logged after
its last checkpoint is dropped from both). And the opposite: a run that stopped on request (exit 75) is not
restarted by torchrun.

Before the fix in pipeline/train/distributed.py (incarnation_store) the restarted ranks read the previous
incarnation's keys in torchrun's store (which outlives the workers), gloo tried to connect to the dead rank 0
("connectFullMesh failed ... Connection refused") and the job failed after its one restart; and a
train.max_duration_s stop was restarted by torchrun, resumed and trained on (keep_elastic_agent_from_restarting)."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.multirank import free_port
from tests.pipeline.train.runs import read_metrics
from tests.pipeline.train.test_resume import STEPS, assert_same_history
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive, start

TB = "log.tensorboard=true"
RENDEZVOUS = {"static": lambda: [],
              "c10d": lambda: ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                               "--rdzv-id", "4242"]}


def tensorboard_losses(run_dir: Path, purge: bool = True) -> dict[int, list[float]]:
    """Every `loss` scalar (TensorBoard tag loss/total) in the run's event files: as TensorBoard shows them
    (purge=True: the events a restart's purge_step discards are gone), or every one written (purge=False)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train.metrics_writer import tensorboard_run_dir

    acc = EventAccumulator(str(tensorboard_run_dir(run_dir)), size_guidance={"scalars": 0},
                           purge_orphaned_data=purge)
    acc.Reload()
    out: dict[int, list[float]] = {}
    for event in acc.Scalars("loss/total"):
        out.setdefault(event.step, []).append(event.value)
    return out


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("auto_restart") / "straight"
    ok = drive(run_args(shards, run_dir, TB), world_size=2, launcher="torchrun", timeout=180)
    assert ok.returncode == 0, ok.stderr[-3000:]
    return run_dir


@pytest.mark.multirank
@pytest.mark.parametrize("rendezvous", sorted(RENDEZVOUS))
def test_a_rank_killed_mid_run_restarts_the_job_from_the_last_checkpoint(shards, straight, tmp_path, rendezvous):
    run_dir = tmp_path / "restarted"
    # Rank 1 dies as step 6 starts, in the first incarnation only: rank 0 has logged step 5 (it blocks in
    # step 6's gradient all-reduce), the last checkpoint is step_4. torchrun ends rank 0 and starts both
    # ranks again with TORCHELASTIC_RESTART_COUNT=1.
    proc = drive(run_args(shards, run_dir, TB),
                 {"FAULT_KILL_AT": "6:1", "FAULT_RANK": "1", "FAULT_ONLY_FIRST_ATTEMPT": "1"}, world_size=2,
                 launcher="torchrun", launcher_args=["--max-restarts", "1", *RENDEZVOUS[rendezvous]()], timeout=240)
    log = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, log
    kills = [line for line in proc.stderr.splitlines() if line.startswith("fault: SIGKILL")]
    assert kills == ["fault: SIGKILL rank 1 (restart count 0) at step 6 micro-batch 1"], log
    assert f"resumed from {run_dir / 'checkpoints' / 'step_4'} at step 4" in proc.stdout, log
    assert proc.stdout.count("step 5/8") == 2 and proc.stdout.count("step 6/8") == 1, log   # 5 logged, lost, redone

    assert_same_history(straight, run_dir)   # exact fp32 losses and val losses, no duplicate steps
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, STEPS + 1))
    tb = tensorboard_losses(run_dir)
    assert sorted(tb) == list(range(1, STEPS + 1)) and all(len(v) == 1 for v in tb.values()), tb
    assert tb == tensorboard_losses(straight)
    written = tensorboard_losses(run_dir, purge=False)   # the killed incarnation's step 5 is in its event file
    assert len(written[5]) == 2 and all(len(written[s]) == 1 for s in written if s != 5), written
    assert not (run_dir / "run.lock").exists() and not (run_dir / "PREEMPTED").exists()


@pytest.mark.multirank
@pytest.mark.parametrize("stop", ["max_duration_s", "SIGTERM"])
def test_a_run_stopped_on_request_is_not_restarted(shards, tmp_path, stop):
    """A stop on request ends every rank with a checkpoint and exit 75, which torchrun alone would take for a
    failure and restart (resuming, and training on past the limit): the ranks stop their torchrun instead.
    max_duration_s: the ranks stop by themselves; SIGTERM to torchrun (what SLURM sends before the limit): the
    agent, already shutting down, forwards it and must still not restart anything."""
    run_dir = tmp_path / "run"
    extra = ["train.max_duration_s=1e-3"] if stop == "max_duration_s" else ["train.max_steps=400"]
    proc = start(run_args(shards, run_dir, *extra), world_size=2, launcher="torchrun",
                 launcher_args=["--max-restarts", "1"])
    try:
        if stop == "SIGTERM":
            deadline = time.monotonic() + 120
            while not ((run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 3):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = f"{out[-3000:]}\n{err[-5000:]}"
    assert proc.returncode != 0, log   # torchrun's own code; the stop shows in run_dir/PREEMPTED
    assert "resumed from" not in out and out.count("step 1/") == 1 and "stopped: stopped at step" in err, log
    marker = json.loads((run_dir / "PREEMPTED").read_text())
    reason = "train.max_duration_s reached" if stop == "max_duration_s" else "SIGTERM"
    assert marker["reason"] == reason and (stop == "SIGTERM" or marker["step"] == 1), marker
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{marker['step']}"
