"""Steps with a non-finite loss or gradient (NaN / Inf): skipped on every rank, counted, fatal when they persist.

Detection happens on the loss of every micro-batch, accumulated on the device (no host sync per
micro-batch), and on the gradients DeepSpeed does not check itself: at ZeRO-0 the engine hands the plain
optimizer its averaged gradients unchecked, and the parameters stepped outside DeepSpeed (OE table and
expert shards) are ours. Before the optimizer step of the accumulation boundary, one all-reduce of
[bad losses, bad gradients] tells every rank whether any rank saw either, so all ranks take the same
decision (a rank that skipped alone would leave the replicas out of sync). ZeRO-1/2/3 find a non-finite
gradient in their own reduced partitions and skip the update themselves (an "overflow"); the trainer reads
that from engine.was_step_applied() and counts it the same way.

Skipping: the optimizer's `step()` becomes a no-op for this step (SkippableStepMixin), so neither weights
nor optimizer moments move; DeepSpeed then zeroes the gradients as usual. The learning-rate schedule still
advances (ZeRO-1/2 fp32 already treat the NaN gradient as an overflow and hold the schedule back; the
trainer re-aligns it), so lr(step) stays a fixed function of the step number at every ZeRO stage.

After `train.max_bad_steps` consecutive bad steps the run stops with TrainingDivergedError: a one-line
diagnostic with the last finite step and what to try.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


class SkippableStepMixin:
    """Put first in the bases of a torch optimizer: `skip_update = True` turns the next step() into a no-op."""

    skip_update = False

    def step(self, closure=None):
        if self.skip_update:
            return None
        return super().step(closure)


class SkippableAdamW(SkippableStepMixin, torch.optim.AdamW):
    pass


def find_skippable_optimizers(engine) -> list:
    """The SkippableStepMixin optimizers behind a DeepSpeed engine (the client optimizer itself at ZeRO-0
    fp32, or the one a ZeRO / bf16 wrapper holds as `.optimizer`)."""
    found, opt = [], getattr(engine, "optimizer", None)
    for _ in range(3):
        if opt is None:
            break
        if isinstance(opt, SkippableStepMixin):
            found.append(opt)
            break
        opt = getattr(opt, "optimizer", None)
    return found


class BadStepGuard:
    def __init__(self, max_consecutive: int, optimizers: list, world_size: int, device: torch.device,
                 backend: str, rank: int = 0):
        if not optimizers:
            raise RuntimeError("the training optimizer cannot skip a non-finite step: build it with "
                               "pipeline.train.bad_steps.SkippableStepMixin (e.g. SkippableAdamW)")
        self.max_consecutive = max_consecutive
        self.optimizers = optimizers      # others stepping outside DeepSpeed may be appended
        self.world_size, self.rank = world_size, rank
        # Collectives run on the backend's device (CUDA under nccl).
        self.device = device if backend == "nccl" else torch.device("cpu")
        self.skipped_total = 0
        self.consecutive = 0
        self.last_good_step: int | None = None
        self._bad: torch.Tensor | None = None
        self.grads_to_check = lambda: []   # the gradients no one else checks (set by the Trainer)
        self.reason = "loss"
        # A stop request (pipeline/train/preemption.py) rides on the same all-reduce, so every rank stops
        # after the same step at no extra collective.
        self.stop_requested = lambda: False
        self.stop_agreed = False

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state.get("skipped_steps", 0))

    def start_step(self) -> None:
        self._bad = None

    def observe(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss (stays on its device: no host sync)."""
        bad = (~torch.isfinite(loss.detach())).to(torch.float32)
        self._bad = bad if self._bad is None else self._bad + bad

    def _bad_gradients(self) -> torch.Tensor:
        grads = [g._values() if g.is_sparse else g for g in self.grads_to_check() if g is not None]
        if not grads:
            return torch.zeros(())
        # one fused norm per tensor; any NaN/Inf element makes the sum of norms non-finite
        total = torch.stack(torch._foreach_norm(grads)).double().sum()
        return (~torch.isfinite(total)).to(torch.float32)

    def decide(self) -> bool:
        """Collective (every rank, once per optimizer step, before engine.step()): skip this update?"""
        bad_loss = self._bad if self._bad is not None else torch.zeros(())
        stop = torch.tensor(1.0 if self.stop_requested() else 0.0)
        bad = torch.stack([bad_loss.reshape(()).float().cpu(), self._bad_gradients().cpu(), stop]).to(self.device)
        if self.world_size > 1:
            dist.all_reduce(bad)
        bad_loss, bad_grad, self.stop_agreed = (float(x) > 0 for x in bad.cpu())
        skip = bad_loss or bad_grad
        self.reason = "loss" if bad_loss else "gradient"
        for opt in self.optimizers:
            opt.skip_update = skip
        return skip

    def finish(self, step: int, skipped: bool, lr_scheduler=None, applied: bool = True) -> None:
        """`applied`: whether the engine updated the weights (False when ZeRO found a non-finite gradient)."""
        for opt in self.optimizers:
            opt.skip_update = False
        if not skipped and not applied:
            skipped, self.reason = True, "gradient (found by DeepSpeed)"
        if not skipped:
            self.consecutive = 0
            self.last_good_step = step
            return
        self.skipped_total += 1
        self.consecutive += 1
        # Keep lr(step) a function of the step number even where DeepSpeed held the schedule back.
        if lr_scheduler is not None and getattr(lr_scheduler, "last_epoch", step) < step:
            lr_scheduler.step()
        if self.rank == 0:
            print(f"warning: step {step}: non-finite {self.reason} on some rank; update skipped "
                  f"({self.consecutive} in a row, limit train.max_bad_steps={self.max_consecutive}; "
                  f"{self.skipped_total} skipped in total)", file=sys.stderr, flush=True)

    def check(self, step: int) -> None:
        """Raise once the limit of consecutive bad steps is reached (call after the step's callbacks ran,
        so the bad step's metrics are already written)."""
        if self.consecutive >= self.max_consecutive:
            last = f"step {self.last_good_step}" if self.last_good_step is not None else "none in this process"
            raise TrainingDivergedError(
                f"stopping at step {step}: {self.consecutive} consecutive steps with a non-finite loss "
                f"(train.max_bad_steps={self.max_consecutive}); last finite step: {last}; "
                f"{self.skipped_total} steps skipped in total. Lower optim.lr, raise schedule.warmup_steps or "
                f"check the data, then resume from an earlier checkpoint (train.resume=<run_dir>/checkpoints/step_N)")
