"""Preemption: a stop signal (SIGTERM / SIGUSR1 by default: what SLURM's --signal and torchrun forward) or
train.max_duration_s of wall time ends the run at a step boundary with a checkpoint.

The handler only sets a flag. Every rank reports its flag in the all-reduce the trainer already runs once per
optimizer step (BadStepGuard.decide), so all ranks agree on the same last step; after it they write a
checkpoint and end with STOPPED_EXIT_CODE. Rank 0 also writes run_dir/PREEMPTED (step, reason) for a
launcher script that requeues the job (launch/slurm.sbatch); the next start resumes exactly and removes it.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

STOPPED_EXIT_CODE = 75          # EX_TEMPFAIL: stopped on request, resumable
MARKER = "PREEMPTED"


class StopRequested(Exception):
    """The run stopped on a signal or its time limit after checkpointing step `step`."""

    def __init__(self, step: int, reason: str, checkpoint: Path | None):
        super().__init__(f"stopped at step {step} ({reason}); checkpoint {checkpoint}; rerun the same command "
                         f"to resume")
        self.step, self.reason, self.checkpoint = step, reason, checkpoint


class StopFlag:
    def __init__(self, signals: list[str], max_duration_s: float | None):
        self.reason: str | None = None
        self.deadline = None if max_duration_s is None else time.monotonic() + max_duration_s
        self._previous = {}
        for name in signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.reason = self.reason or signal.Signals(signum).name

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "train.max_duration_s reached"
        return self.reason is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def write_marker(run_dir: str | Path, step: int, reason: str) -> None:
    from pipeline.data.atomic_io import atomic_write_bytes
    atomic_write_bytes(Path(run_dir) / MARKER, json.dumps({"step": step, "reason": reason}).encode())


def clear_marker(run_dir: str | Path) -> None:
    (Path(run_dir) / MARKER).unlink(missing_ok=True)
