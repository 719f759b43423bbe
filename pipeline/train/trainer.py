"""The training loop: one optimizer step = grad_accum micro-batches through the DeepSpeed engine.

The Trainer owns the loop and the step bookkeeping; everything periodic (validation, metrics and console,
checkpoints) is a callback (pipeline/train/callbacks.py) called after every step, in order, with the step's
metrics dict, which a callback may extend (validation adds `val_loss` before the logger writes it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pipeline.config.run import RunConfig
from pipeline.data.loader import TrainBatches, ValBatches, to_tensors
from pipeline.train.bad_steps import BadStepGuard, find_skippable_optimizers
from pipeline.train.distributed import DistInfo
from pipeline.train.step_stats import StepStats


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float] | None = None          # only on steps where metrics were collected
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)


class Callback:
    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", result: StepResult) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    # parameters stepped outside DeepSpeed (sharded OE table, expert shards): pipeline/train/external_params.py
    external = None

    def __init__(self, cfg: RunConfig, dist_info: DistInfo, engine, train_data: TrainBatches,
                 val_data: ValBatches | None, callbacks: list[Callback], start_step: int = 0,
                 flops_per_token: int | None = None):
        self.cfg, self.dist, self.engine = cfg, dist_info, engine
        self.train_data, self.val_data, self.callbacks = train_data, val_data, callbacks
        self.step = start_step
        self.start_step = start_step
        self.flops_per_token = flops_per_token
        self.tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_len
        self.stop_step = min(cfg.train.max_steps, cfg.train.hard_stop_step or cfg.train.max_steps)
        # Plain fp32 ZeRO-0 hands the torch optimizer straight through and records no gradient norm.
        self._own_grad_norm = not hasattr(engine.optimizer, "_global_grad_norm")
        self._interval_step_time = 0.0
        self._interval_steps = 0
        self._start_time = None
        self.bad_steps = BadStepGuard(cfg.train.max_bad_steps, find_skippable_optimizers(engine),
                                      dist_info.world_size, dist_info.device, dist_info.backend, dist_info.rank)

    # ---- schedule of periodic work ---------------------------------------------------------------------
    @property
    def is_last_step(self) -> bool:
        return self.step >= self.stop_step

    def eval_due(self) -> bool:
        e = self.cfg.eval
        return self.val_data is not None and ((e.every and self.step % e.every == 0) or
                                              (e.at_end and self.is_last_step))

    def log_due(self) -> bool:
        return self.step % self.cfg.log.every == 0 or self.is_last_step or self.eval_due()

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self) -> None:
        self._start_time = time.perf_counter()
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.step < self.stop_step:
            self.step += 1
            result = self.train_step(collect=self.log_due())
            for cb in self.callbacks:
                cb.on_step_end(self, result)
            self.bad_steps.check(self.step)
        for cb in self.callbacks:
            cb.on_train_end(self)

    def train_step(self, collect: bool) -> StepResult:
        engine = self.engine
        engine.train()
        t0 = time.perf_counter()
        stats = StepStats() if collect else None
        lrs = self._learning_rates() if collect else {}  # the lrs this step's update uses
        own_norm = None
        skipped = False
        self.bad_steps.start_step()
        for batch in self.train_data.next_step():
            out = engine(**to_tensors(batch, self.dist.device))
            engine.backward(out.loss)
            self.bad_steps.observe(out.loss)
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                skipped = self.bad_steps.decide()  # collective: every rank skips, or none
                if self.external is not None:
                    self.external.before_engine_step()  # collective: expert-dp reduction, external norm
                if collect and self._own_grad_norm:
                    own_norm = self._grad_norm()
            engine.step()
            if boundary and self.external is not None:
                self.external.after_engine_step(self.step, skipped)
            if stats is not None:
                stats.add(out)
        self.bad_steps.finish(self.step, skipped, engine.lr_scheduler)
        self._interval_step_time += time.perf_counter() - t0
        self._interval_steps += 1
        if stats is None:
            return StepResult(self.step)
        scalars, histograms = stats.reduce(self.dist.world_size)
        grad_norm = own_norm if self._own_grad_norm else engine.get_global_grad_norm()
        if self.external is not None:
            grad_norm = self.external.last_grad_norm  # engine + external parameters (the clipping norm)
        if grad_norm is not None:
            scalars["grad_norm"] = float(grad_norm)
        scalars.update(self._throughput())
        scalars.update(lrs)
        if self.external is not None:
            scalars.update(self.external.learning_rates(self.step))
        scalars["tokens_seen"] = float(self.step * self.tokens_per_step)
        scalars["epoch"] = self.train_data.epoch
        scalars["skipped_steps"] = float(self.bad_steps.skipped_total)
        return StepResult(self.step, scalars, histograms)

    def _grad_norm(self) -> float:
        # After the boundary backward, ZeRO-0 gradients are already averaged over ranks: a local norm is global.
        grads = [p.grad.detach().double().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def _learning_rates(self) -> dict[str, float]:
        out = {}
        for group in self.engine.optimizer.param_groups:
            name = group.get("name", "decay")
            if name == "decay" or "lr" not in out:
                out["lr"] = float(group["lr"])
            if name == "oe_tables":
                out["lr_oe"] = float(group["lr"])
        return out

    def _throughput(self) -> dict[str, float]:
        step_time = self._interval_step_time / max(self._interval_steps, 1)
        tokens_per_s = self.tokens_per_step / step_time if step_time > 0 else 0.0
        self._interval_step_time, self._interval_steps = 0.0, 0
        out = {"step_time_s": step_time, "tokens_per_s": tokens_per_s}
        peak = self.cfg.log.peak_flops_per_device
        if peak and self.flops_per_token:
            out["mfu"] = tokens_per_s * self.flops_per_token / (peak * self.dist.world_size)
        return out

    def eta_seconds(self) -> float:
        done = self.step - self.start_step
        if done <= 0 or self._start_time is None:
            return float("nan")
        return (time.perf_counter() - self._start_time) / done * (self.stop_step - self.step)

    # ---- validation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted mean next-token loss over the fixed validation batches, over all ranks."""
        engine = self.engine
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for batch in self.val_data:
            tensors = to_tensors(batch, self.dist.device)
            out = engine(**tensors)
            n = (tensors["labels"] != -100).sum()
            total += torch.stack([out.losses["lm"].double().cpu() * n.cpu(), n.double().cpu()])
        if self.dist.world_size > 1:
            device = self.dist.device if self.dist.backend == "nccl" else torch.device("cpu")
            total = total.to(device)
            dist.all_reduce(total)
            total = total.cpu()
        engine.train()
        loss = float(total[0] / total[1].clamp(min=1))
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
