"""Learning-rate schedules, as a multiplier on each parameter group's own peak lr (so groups with an lr
multiplier, the OE tables, follow the same shape).

Step convention: `step` k counts optimizer updates already taken, update k uses factor(k), and the metrics
record of step s = k + 1 logs that update's lr. With n = k + 1 (the 1-based update number) and w =
warmup_steps, every kind starts with a linear warm-up from 0, factor n / w while n <= w, then:
- cosine / linear: from 1 down to the floor (min_lr_ratio) at k = decay_steps, flat after;
- constant: 1;
- inv_sqrt: sqrt(w / n) (1 at n = w, continuous with the warm-up), floored at min_lr_ratio;
- wsd (warm-up, stable, decay): 1, then its cooldown over the last cooldown_steps before decay_steps.
A cooldown (wsd's, or one added to any kind with cooldown_start_step S and cooldown_steps N) replaces the
curve from k = S on: with top = the curve's own factor at S, floor = min_lr_ratio and p = min(1, (k - S) / N),
factor = floor + (top - floor) * (1 - p) ("linear") or (1 - sqrt(p)) ("1-sqrt", Hagele et al. 2024), so the
first cooldown update (k = S) keeps the lr the curve had at step S and the floor is reached at k = S + N.
"""
from __future__ import annotations

import math

import torch

from pipeline.config.base import ConfigError
from pipeline.config.run import ScheduleConfig


def _curve(step: int, cfg: ScheduleConfig) -> float:
    """The factor without a cooldown."""
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio
    if step < warmup:
        # (step + 1) so that the very first update already moves the weights.
        return (step + 1) / warmup
    if cfg.kind in ("constant", "wsd"):
        return 1.0
    if cfg.kind == "inv_sqrt":
        return max(floor, math.sqrt(warmup / (step + 1)))
    span = max(1, cfg.decay_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    window = cfg.cooldown_window()
    if window is None or step < window[0]:
        return _curve(step, cfg)
    start, length = window
    top, floor = _curve(start, cfg), cfg.min_lr_ratio
    progress = min(1.0, (step - start) / length)
    shape = 1.0 - progress if cfg.cooldown_shape == "linear" else 1.0 - math.sqrt(progress)
    return floor + (top - floor) * shape


def _curve_keys(*cfgs: ScheduleConfig) -> list[str]:
    """The keys that shape the curve a cooldown starts from (wsd's decay_steps only places its cooldown)."""
    decays = any(c.kind in ("cosine", "linear") for c in cfgs)
    return ["kind", "warmup_steps", "min_lr_ratio"] + (["decay_steps"] if decays else [])


def _cooldown_of(cfg: ScheduleConfig) -> tuple | None:
    window = cfg.cooldown_window()
    return None if window is None else (*window, cfg.cooldown_shape)


def check_resume_cooldown(saved: ScheduleConfig, saved_lr: float, cfg: ScheduleConfig, lr: float, step: int,
                          ckpt: str) -> str | None:
    """A resume at `step` whose cooldown differs from the checkpoint's must continue the checkpoint's lr
    curve: the cooldown starts at `step` or later, and the next update's lr is the one the checkpoint's own
    schedule gives there (ConfigError otherwise). Returns the line describing the new cooldown, if any."""
    cooldown = _cooldown_of(cfg)
    if cooldown is None or cooldown == _cooldown_of(saved):
        return None
    start, length, shape = cooldown
    key = "schedule.cooldown_start_step" if cfg.cooldown_start_step is not None else "schedule.cooldown_steps"
    if start < step:
        raise ConfigError(f"{key}: the cooldown would start at step {start}, before the step {step} of {ckpt}, "
                          f"which was trained without it: start it at step {step} or later")
    old, new = saved_lr * lr_factor(step, saved), lr * lr_factor(step, cfg)
    if not math.isclose(old, new, rel_tol=1e-9):
        differ = [f"schedule.{k}={getattr(saved, k)}" for k in _curve_keys(saved, cfg)
                  if getattr(saved, k) != getattr(cfg, k)]
        differ += [f"optim.lr={saved_lr}"] if saved_lr != lr else []
        raise ConfigError(f"{key}: a new cooldown continues the lr curve of {ckpt}, but this config gives "
                          f"the next update (step {step + 1}) lr {new:.4g} where the checkpoint's schedule gives "
                          f"{old:.4g}: " + (f"set {' '.join(differ)} as in the checkpoint" if differ else
                                            "the checkpoint is in its own cooldown there"))
    return (f"cooldown over steps {start + 1}-{start + length} ({shape}): lr {lr * lr_factor(start, cfg):.4g} "
            f"down to {lr * cfg.min_lr_ratio:.4g}")


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
