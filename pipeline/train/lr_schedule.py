"""Learning-rate schedule: linear warm-up from 0, then cosine (or linear) decay to a floor, then flat.

Expressed as a multiplier on each parameter group's own peak lr, so groups with an lr multiplier (the OE
tables) follow the same shape. `step` counts optimizer updates already taken: update k uses factor(k).
"""
from __future__ import annotations

import math

import torch

from pipeline.config.run import ScheduleConfig


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    warmup, decay_end, floor = cfg.warmup_steps, cfg.decay_steps, cfg.min_lr_ratio
    if step < warmup:
        # (step + 1) so that the very first update already moves the weights.
        return (step + 1) / warmup
    if cfg.kind == "constant":
        return 1.0
    span = max(1, decay_end - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape


class WarmupDecaySchedule(torch.optim.lr_scheduler.LRScheduler):
    """torch LRScheduler so DeepSpeed steps it after every optimizer update and checkpoints its state."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, last_epoch: int = -1):
        self.cfg = cfg
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = lr_factor(self.last_epoch, self.cfg)
        return [base * f for base in self.base_lrs]

    def state_dict(self) -> dict:
        # Only plain numbers: the schedule shape comes from the run config, not from the checkpoint.
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "_last_lr": list(getattr(self, "_last_lr", []))}

    def load_state_dict(self, state: dict) -> None:
        # Only the position is restored: the peak lrs and the shape come from this run's config, so an lr
        # or schedule change given on resume takes effect (pipeline/train/resume_rules.py prints it).
        self.last_epoch = int(state["last_epoch"])
        self.apply()

    def apply(self) -> None:
        """Write the lr for the current step into the optimizer's groups (after a checkpoint load)."""
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs
