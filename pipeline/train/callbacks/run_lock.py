"""Releases the run_dir lock (pipeline/train/run_lock.py) when the Trainer closes, after every other callback
has finished writing into run_dir (and also after an error, so a failed job does not leave its lock behind
until the lock goes stale)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.train.callbacks.callback import Callback
from pipeline.train.run_lock import RunLock

if TYPE_CHECKING:
    from pipeline.train.trainer import Trainer


class RunLockCallback(Callback):
    priority = -1000

    def __init__(self, lock: RunLock):
        self.lock = lock

    def close(self, trainer: "Trainer") -> None:
        self.lock.release()
