"""Throughput, model FLOPs utilisation and ETA, measured around the optimizer step alone (this callback has
the highest priority, so validation and checkpoint time of the previous step are not counted).

Recorded on logged steps, averaged over the steps since the previous logged one:
    step_time_s, tokens_per_s, mfu (when log.peak_flops_per_device is set and the model's FLOPs are known),
    eta_s (wall time since the start of this process per step done, times the steps left).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.train.callbacks.callback import Callback

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class SpeedCallback(Callback):
    priority = 100

    def __init__(self, tokens_per_step: int, flops_per_token: int | None, peak_flops_per_device: float | None,
                 world_size: int):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak, self.world_size = peak_flops_per_device, world_size
        self._interval_time, self._interval_steps = 0.0, 0
        self._t0 = self._start_time = None
        self._start_step = 0

    def on_train_start(self, trainer: "Trainer") -> None:
        self._start_time, self._start_step = time.perf_counter(), trainer.step

    def pre_step(self, trainer: "Trainer") -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        now = time.perf_counter()
        self._interval_time += now - self._t0
        self._interval_steps += 1
        if not trainer.metrics_due:
            return
        step_time = self._interval_time / max(self._interval_steps, 1)
        tokens_per_s = self.tokens_per_step / step_time if step_time > 0 else 0.0
        self._interval_time, self._interval_steps = 0.0, 0
        trainer.record_metric("step_time_s", step_time)
        trainer.record_metric("tokens_per_s", tokens_per_s)
        if self.peak and self.flops_per_token:
            trainer.record_metric("mfu", tokens_per_s * self.flops_per_token / (self.peak * self.world_size))
        done = trainer.step - self._start_step
        trainer.record_metric("eta_s", (now - self._start_time) / done * (trainer.stop_step - trainer.step))
