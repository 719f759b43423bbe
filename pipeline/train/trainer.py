"""The training loop: one optimizer step = grad_accum micro-batches through the DeepSpeed engine.

The Trainer owns the loop, the step bookkeeping and its own checkpointable state (state_dict /
load_state_dict: step, data-loader position, skipped-step count). Everything periodic or on the side
(speed, validation, zero-shot eval, metrics sinks, checkpoints) is a callback (pipeline/train/callbacks/),
called in priority order; a callback adds to the step's record with record_metric().
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.config.run import RunConfig
from pipeline.data.loader import TrainBatches, to_tensors
from pipeline.train import checkpoint
from pipeline.train.bad_steps import BadStepGuard, find_skippable_optimizers
from pipeline.train.callbacks.callback import Callback, ordered
from pipeline.train.distributed import DistInfo
from pipeline.train.param_groups import learning_rate_metrics
from pipeline.train.preemption import StopFlag, StopRequested, clear_marker, write_marker
from pipeline.train.step_stats import StepStats

CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float] | None = None          # only on steps where metrics were collected
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: RunConfig, dist_info: DistInfo, engine, train_data: TrainBatches,
                 callbacks: list[Callback], external=None, config_yaml: str = "", layout_free=None):
        """`external`: the parameters stepped outside DeepSpeed (pipeline/train/external_params.py), or None.
        `config_yaml`: the resolved run config, saved with every checkpoint. `layout_free`: the
        LayoutFreeState (pipeline/train/layout_free.py) that writes and reads the state any layout resumes."""
        self.cfg, self.dist, self.engine, self.external = cfg, dist_info, engine, external
        self.layout_free = layout_free
        self.train_data = train_data
        self.callbacks = ordered(callbacks)
        self.config_yaml = config_yaml
        self.step = 0
        self.resumed_from: Path | None = None
        self.tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_len
        self.stop_step = min(cfg.train.max_steps, cfg.train.hard_stop_step or cfg.train.max_steps)
        # Plain fp32 ZeRO-0 hands the torch optimizer straight through and records no gradient norm.
        self._own_grad_norm = not hasattr(engine.optimizer, "_global_grad_norm")
        self.bad_steps = BadStepGuard(cfg.train.max_bad_steps, find_skippable_optimizers(engine),
                                      dist_info.world_size, dist_info.device, dist_info.backend, dist_info.rank)
        self.bad_steps.grads_to_check = self._unchecked_gradients
        self.stop_flag: StopFlag | None = None   # set by fit: signals / max_duration_s
        self.metrics_due = False
        self._metrics: dict[str, float] | None = None

    # ---- state and checkpoints -------------------------------------------------------------------------
    @property
    def resumed(self) -> bool:
        return self.resumed_from is not None

    def state_dict(self) -> dict:
        # cwd: where relative paths of the run config (data.path) were resolved (pipeline/export/recorded_paths.py)
        return {"format_version": CHECKPOINT_FORMAT_VERSION, "step": self.step, "cwd": os.getcwd(),
                "tokens_seen": self.step * self.tokens_per_step, "world_size": self.dist.world_size,
                "data": self.train_data.state_dict(), **self.bad_steps.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.train_data.load_state_dict(state["data"])
        self.bad_steps.load_state_dict(state)

    def save_checkpoint(self) -> Path:
        """Collective: the engine, the external parameters, every rank's RNGs and this trainer's state."""
        layout_free = self.layout_free if self.cfg.checkpoint.layout_free else None
        return checkpoint.save_checkpoint(self.engine, self.cfg.run_dir, self.step, self.state_dict(),
                                          self.config_yaml, self.cfg.checkpoint.keep_last, external=self.external,
                                          layout_free=layout_free)

    def resume_from(self, ckpt: Path, repartition: bool = False) -> None:
        """Collective: restore everything save_checkpoint wrote. `repartition`: the checkpoint was saved on
        another layout; read the layout-free state instead of DeepSpeed's per-rank files."""
        if repartition and self.layout_free is None:
            raise RuntimeError(f"{ckpt}: resuming on another layout needs the trainer's layout_free state")
        self.load_state_dict(checkpoint.load_checkpoint(self.engine, ckpt, external=self.external,
                                                        repartition=self.layout_free if repartition else None))
        self.resumed_from = ckpt

    # ---- schedule of periodic work ---------------------------------------------------------------------
    @property
    def is_last_step(self) -> bool:
        return self.step >= self.stop_step

    def _metrics_due(self) -> bool:
        return (self.step % self.cfg.log.every == 0 or self.is_last_step
                or any(cb.needs_metrics(self) for cb in self.callbacks))

    def record_metric(self, name: str, value: float) -> None:
        """Add a scalar to this step's record (metrics.jsonl, TensorBoard, console). Only steps whose metrics
        are collected (log.every, the last step, and steps a callback asked for via needs_metrics) have a
        record; calling this on another step is an error rather than a number that silently disappears."""
        if self._metrics is None:
            raise RuntimeError(f"record_metric({name!r}) at step {self.step}: this step collects no metrics "
                               "(ask for it with the callback's needs_metrics)")
        self._metrics[name] = float(value)

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train to the stop step. Raises StopRequested after checkpointing when a stop signal or the time
        limit ended the run early (every rank after the same step)."""
        t = self.cfg.train
        self.stop_flag = StopFlag(list(t.stop_signals), t.max_duration_s)
        self.bad_steps.stop_requested = self.stop_flag.requested
        if self.dist.rank == 0:
            clear_marker(self.cfg.run_dir)   # this start resumes whatever a preempted run left
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            while self.step < self.stop_step:
                self.step += 1
                self.metrics_due = self._metrics_due()
                for cb in self.callbacks:
                    cb.pre_step(self)
                result = self.train_step(collect=self.metrics_due)
                self._metrics = result.metrics
                for cb in self.callbacks:
                    cb.on_step_end(self, result)
                self._metrics = None
                self.bad_steps.check(self.step)
                if self.bad_steps.stop_agreed:
                    self._stop_here()
            for cb in self.callbacks:
                cb.on_train_end(self)
        except BaseException as error:
            for cb in self.callbacks:
                cb.on_error(self, error)
            raise
        finally:
            self.stop_flag.restore()
            for cb in self.callbacks:
                cb.close(self)

    def _stop_here(self) -> None:
        reason = self.stop_flag.reason or "a stop signal on another rank"
        last = checkpoint.find_latest_checkpoint(self.cfg.run_dir)
        if last is None or last.name != f"step_{self.step}":
            last = self.save_checkpoint()   # collective: every rank agreed to stop after this step
        if self.dist.rank == 0:
            write_marker(self.cfg.run_dir, self.step, reason)
        raise StopRequested(self.step, reason, last)

    def train_step(self, collect: bool) -> StepResult:
        engine = self.engine
        engine.train()
        stats = StepStats() if collect else None
        lrs = learning_rate_metrics(engine.optimizer.param_groups) if collect else {}  # this update's lrs
        own_norm = None
        skipped = False
        self.bad_steps.start_step()
        batches = self.train_data.next_step()
        prefetcher = getattr(getattr(engine.module, "over_encoding", None), "prefetcher", None)
        if prefetcher is not None:
            prefetcher.plan(batches)   # the OE lookups of this step's micro-batches, each during the one before
        for batch in batches:
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
                if collect:
                    for cb in self.callbacks:
                        cb.on_gradients(self)
            engine.step()
            if boundary and self.external is not None:
                self.external.after_engine_step(self.step, skipped)
            if stats is not None:
                stats.add(out)
        self.bad_steps.finish(self.step, skipped, engine.lr_scheduler, applied=engine.was_step_applied())
        if stats is None:
            return StepResult(self.step)
        scalars, histograms = stats.reduce(self.dist.world_size)
        grad_norm = own_norm if self._own_grad_norm else engine.get_global_grad_norm()
        if self.external is not None:
            grad_norm = self.external.last_grad_norm  # engine + external parameters (the clipping norm)
        if grad_norm is not None:
            scalars["grad_norm"] = float(grad_norm)
        scalars.update(lrs)
        if self.external is not None:
            scalars.update(self.external.learning_rates(self.step))
        scalars["tokens_seen"] = float(self.step * self.tokens_per_step)
        scalars["epoch"] = self.train_data.epoch
        if self.cfg.data.sources:
            scalars.update(self.train_data.source_metrics())
        scalars["skipped_steps"] = float(self.bad_steps.skipped_total)
        return StepResult(self.step, scalars, histograms)

    def _unchecked_gradients(self) -> list:
        """The gradients DeepSpeed applies without a finiteness check: all of them at plain ZeRO-0 (the client
        optimizer is the engine's optimizer), plus the external parameters' in every layout."""
        grads = [p.grad for p in self.engine.module.parameters()] if self._own_grad_norm else []
        if self.external is not None:
            grads += [p.param.grad for p in self.external.params]
        return grads

    def _grad_norm(self) -> float:
        # After the boundary backward, ZeRO-0 gradients are already averaged over ranks: a local norm is global.
        grads = [p.grad.detach().double().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0
