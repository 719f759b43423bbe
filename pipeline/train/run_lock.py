"""One training job per run_dir at a time: run_dir/run.lock.

Rank 0 creates the lock atomically (O_CREAT | O_EXCL) before the job reads, writes or deletes anything in
run_dir; it records host, pid, start time and the job's identity, and a heartbeat thread refreshes its
modification time. A lock is stale, and taken over with a message, when its process is gone (same host) or
its heartbeat stopped for train.lock_stale_s (another host, where the pid cannot be checked), or when it
belongs to an earlier incarnation of this same job (a restart under torchrun --max-restarts or a requeue
keeps the rendezvous identity). The other ranks wait until the lock names their job: a second job into the
same run_dir ends on every rank with one line naming the holder, before any collective.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_FILE = "run.lock"
HEARTBEAT_S = 15.0


class RunDirLocked(RuntimeError):
    """Another job owns this run_dir."""


def job_identity() -> str:
    """The same string on every rank of one job, different for two jobs running at the same time."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        # One SLURM job id is one job, also across a requeue (which keeps the id but may start rank 0 on another
        # host, with a new torchrun store port): the requeued run takes over its own lock at once.
        return f"SLURM_JOB_ID={env['SLURM_JOB_ID']}"
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"TORCHELASTIC_RUN_ID={run_id}@{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    return f"rendezvous={env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | Path, rank: int, stale_s: float, wait_s: float = 120.0):
        self.path = Path(run_dir) / LOCK_FILE
        self.rank, self.stale_s, self.wait_s = rank, stale_s, wait_s
        self.job = job_identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            info = json.loads(self.path.read_text())
            return info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}   # torn or foreign content: judged by its age below

    def _describe(self, info: dict) -> str:
        return (f"job {info.get('job', '?')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
                f"started {info.get('started', '?')})")

    def _stale_reason(self, info: dict) -> str | None:
        if info.get("job") == self.job:
            return "an earlier run of this same job"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return None if _alive(info["pid"]) else f"its process {info['pid']} is gone"
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it was just removed"
        return f"no heartbeat for {age:.0f} s" if age > self.stale_s else None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.rank != 0:
            self._wait_for_rank0()
            return
        body = json.dumps({"job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                if info is None:
                    continue
                reason = self._stale_reason(info)
                if reason is None:
                    raise RunDirLocked(f"{self.path.parent}: in use by {self._describe(info)} (lock {self.path}); "
                                       f"wait for it to finish, stop it, or use another run_dir") from None
                if info.get("job") != self.job or info.get("pid") != os.getpid():
                    print(f"run_dir lock: taking over {self.path} from {self._describe(info)}: {reason}",
                          flush=True)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="run-lock-heartbeat")
            self._thread.start()
            return
        raise RunDirLocked(f"{self.path}: could not be created (another job is taking it at the same time)")

    def _wait_for_rank0(self) -> None:
        deadline = time.monotonic() + self.wait_s
        info = None
        while time.monotonic() < deadline:
            info = self._read()
            if info and info.get("job") == self.job:
                return
            time.sleep(0.2)
        held = f" by {self._describe(info)}" if info else ""
        raise RunDirLocked(f"{self.path.parent}: rank 0 of this job did not take the run_dir lock within "
                           f"{self.wait_s:.0f} s (held{held or ' by nobody'}); another job may own it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self.rank == 0 and self._thread is not None:
            info = self._read()
            if info and info.get("job") == self.job and info.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._thread = None
