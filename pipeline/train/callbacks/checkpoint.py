"""Checkpoints every `checkpoint.every` steps and at the last (or hard-stop) step; the Trainer writes them
(pipeline/train/checkpoint.py owns the folder layout). Runs last, after the step's metrics are written.

The cost of each save is measured (wall seconds on rank 0, including waiting for the slowest rank, and the
bytes of the folder, of which the layout-free state) and printed; as the step's record is already written,
CheckpointCostMetrics adds it to the next step's record as checkpoint/save_s, checkpoint/bytes,
checkpoint/layout_free_bytes and checkpoint/saved_step."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.train.callbacks.callback import Callback
from pipeline.train.checkpoint import LAYOUT_FREE_DIR, folder_bytes

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class CheckpointCallback(Callback):
    priority = -100

    def __init__(self, every: int, save_at_end: bool):
        self.every, self.save_at_end = every, save_at_end
        self.last_saved: int | None = None
        self.cost: dict[str, float] | None = None   # the last save's, until a step record takes it

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
        seconds = time.perf_counter() - t0
        self.last_saved = trainer.step
        # every rank holds a cost, so every rank asks for the next step's metrics (their collection is collective)
        total = layout_free = 0
        if trainer.dist.rank == 0:
            total, layout_free = folder_bytes(path), folder_bytes(path / LAYOUT_FREE_DIR)
            print(f"checkpoint {path} ({seconds:.1f} s, {total / 2**20:.1f} MiB of which layout-free "
                  f"{layout_free / 2**20:.1f} MiB)", flush=True)
        self.cost = {"checkpoint/save_s": seconds, "checkpoint/bytes": float(total),
                     "checkpoint/layout_free_bytes": float(layout_free), "checkpoint/saved_step": float(trainer.step)}


class CheckpointCostMetrics(Callback):
    """Adds the last save's cost to the first step record after it (before the metrics sink writes it)."""
    priority = 0

    def __init__(self, saver: CheckpointCallback):
        self.saver = saver

    def needs_metrics(self, trainer: "Trainer") -> bool:
        return self.saver.cost is not None

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if self.saver.cost is not None and result.metrics is not None:
            for name, value in self.saver.cost.items():
                trainer.record_metric(name, value)
            self.saver.cost = None
