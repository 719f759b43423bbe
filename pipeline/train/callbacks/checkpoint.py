"""Checkpoints every `checkpoint.every` steps and at the last (or hard-stop) step; the Trainer writes them
(pipeline/train/checkpoint.py owns the folder layout). Runs last, after the step's metrics are written."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.train.callbacks.callback import Callback

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class CheckpointCallback(Callback):
    priority = -100

    def __init__(self, every: int, save_at_end: bool):
        self.every, self.save_at_end = every, save_at_end
        self.last_saved: int | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        self.last_saved = trainer.step if trainer.resumed else None

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if not ((self.every and trainer.step % self.every == 0) or (self.save_at_end and trainer.is_last_step)):
            return
        if trainer.bad_steps.consecutive:
            # Never replace the last good checkpoint with one taken inside a run of non-finite steps.
            if trainer.dist.rank == 0:
                print(f"checkpoint of step {trainer.step} not written: the step had a non-finite loss", flush=True)
            return
        if self.last_saved == trainer.step:
            return
        t0 = time.perf_counter()
        path = trainer.save_checkpoint()
        self.last_saved = trainer.step
        if trainer.dist.rank == 0:
            print(f"checkpoint {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
