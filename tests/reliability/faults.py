"""Run the fault-injecting training driver (tests/reliability/fault_driver.py) in fresh processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.multirank import REPO, free_port, rank_env

DRIVER = REPO / "tests" / "reliability" / "fault_driver.py"


def drive(args: list[str], faults: dict | None = None, world_size: int = 1, timeout: float = 240,
          launcher: str = "python", launcher_args: list[str] = ()) -> subprocess.CompletedProcess:
    """launch/train.py through the driver, with FAULT_* variables; never raises on a non-zero exit.
    launcher_args go to torchrun before the script (e.g. ["--max-restarts", "1"])."""
    cmd, env = start_args(args, faults, world_size, launcher, launcher_args)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start(args: list[str], faults: dict | None = None, world_size: int = 1, launcher: str = "python",
          launcher_args: list[str] = ()) -> subprocess.Popen:
    """drive() without waiting: the running launcher (to signal it), its output piped (text)."""
    cmd, env = start_args(args, faults, world_size, launcher, launcher_args)
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_args(args, faults, world_size, launcher, launcher_args) -> tuple[list[str], dict]:
    env = rank_env(0, world_size, free_port(), {k: str(v) for k, v in (faults or {}).items()})
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if launcher == "python":
        cmd = [sys.executable, str(DRIVER)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *launcher_args, str(DRIVER)]
    return cmd + args, env


def spawn_ranks(args: list[str], world_size: int, faults: dict | None = None,
                logs: Path | None = None) -> list[subprocess.Popen]:
    """One independent driver process per rank (as mpirun / a scheduler would start them): no supervising
    agent tears the others down when one dies."""
    port = free_port()
    procs = []
    for r in range(world_size):
        env = rank_env(r, world_size, port, {k: str(v) for k, v in (faults or {}).items()})
        out = open(logs / f"rank{r}.log", "w") if logs else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, str(DRIVER), *args], env=env, cwd=REPO,
                                      stdout=out, stderr=subprocess.STDOUT))
    return procs


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


__all__ = ["DRIVER", "drive", "error_lines", "spawn_ranks", "start"]
