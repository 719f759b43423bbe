"""Ranks stop when their launcher dies: SIGKILL of torchrun mid-run ends both ranks within seconds, and no
checkpoint is written after it (they would otherwise keep training behind a requeued job)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.train.runs import make_shards
from tests.pipeline.train.test_resume import TINY_RUN


@pytest.mark.multirank
def test_ranks_stop_when_the_launcher_is_killed(tmp_path):
    shards, run_dir = make_shards(tmp_path / "shards"), tmp_path / "run"
    env = rank_env(0, 2, free_port())
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "launch" / "train.py"), "--config", str(TINY_RUN),
           f"data.path={shards}", f"run_dir={run_dir}", "train.max_steps=100000", "checkpoint.every=1", "checkpoint.keep_last=0",
           "eval.every=0", "log.tensorboard=false"]
    launcher = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        # training, and checkpointing every step (all kept: a poll must not miss a short-lived step_2)
        while not (run_dir / "checkpoints" / "step_2").is_dir():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.5)
        ranks = psutil.Process(launcher.pid).children(recursive=True)
        assert len([r for r in ranks if "train.py" in " ".join(r.cmdline())]) == 2, ranks
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        gone, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive, f"ranks still running 30 s after their launcher died: {alive}"
        steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        time.sleep(3)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == steps   # nothing written after
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
