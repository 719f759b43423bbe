"""Preemption: SIGTERM (or SIGUSR1, or train.max_duration_s) ends the run after the current step on every rank
with a checkpoint of that step, exit code 75 and run_dir/PREEMPTED; rerunning the command resumes and gives
the uninterrupted run's losses. Before, SIGTERM killed the run and lost every step since the last checkpoint."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.train.runs import make_shards, read_metrics, step_losses
from tests.pipeline.train.test_resume import TINY_RUN

STEPS = 40


def command(shards, run_dir, world: int, *extra) -> list[str]:
    args = [str(REPO / "launch" / "train.py"), "--config", str(TINY_RUN), f"data.path={shards}",
            f"run_dir={run_dir}", f"train.max_steps={STEPS}", "checkpoint.every=1000", "eval.every=0",
            "eval.at_end=false", "log.tensorboard=false", *extra]
    if world == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


def env():
    e = rank_env(0, 1, free_port())
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.multirank
@pytest.mark.parametrize("world,sig", [(1, signal.SIGUSR1), (2, signal.SIGTERM)])
def test_a_stop_signal_checkpoints_the_current_step_and_resume_is_exact(tmp_path, world, sig):
    shards = make_shards(tmp_path / "shards")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(command(shards, straight, 1)).returncode == 0
    proc = subprocess.Popen(command(shards, stopped, world), env=env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not ((stopped / "metrics.jsonl").is_file() and len(read_metrics(stopped)) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(sig)   # torchrun forwards SIGTERM to its workers
    out, err = proc.communicate(timeout=120)
    if world == 1:
        assert proc.returncode == 75, err[-3000:]
    else:   # torchrun reports its workers' exit; what matters is the checkpoint and the marker below
        assert proc.returncode != 0, err[-3000:]
    marker = json.loads((stopped / "PREEMPTED").read_text())
    step = marker["step"]
    assert 3 <= step < STEPS and marker["reason"] in ("SIGUSR1", "SIGTERM"), marker
    assert (stopped / "checkpoints" / f"step_{step}").is_dir()        # the step it stopped after, not a cadence
    resumed = run(command(shards, stopped, 1))                        # (ZeRO-0: any world size resumes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stdout and not (stopped / "PREEMPTED").exists()
    a, b = step_losses(straight), step_losses(stopped)
    assert sorted(b) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), (s, a[s], b[s])


def test_max_duration_stops_with_a_checkpoint(tmp_path):
    shards = make_shards(tmp_path / "shards")
    proc = run(command(shards, tmp_path / "run", 1, "train.max_duration_s=1e-3"))
    assert proc.returncode == 75, proc.stderr[-3000:]
    marker = json.loads((tmp_path / "run" / "PREEMPTED").read_text())
    assert marker == {"step": 1, "reason": "train.max_duration_s reached"}
    assert "stopped: stopped at step 1" in proc.stderr
