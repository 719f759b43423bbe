"""Periodic work after each optimizer step: validation, metrics + console line, checkpoints (in this order,
so a validation result lands in the same metrics record and a checkpoint follows the logged step)."""
from __future__ import annotations

import math
import sys
import time

import psutil
import torch

from pipeline.train.checkpoint import save_checkpoint
from pipeline.train.metrics_writer import MetricsWriter
from pipeline.train.trainer import Callback, StepResult, Trainer


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


class EvalCallback(Callback):
    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if trainer.eval_due():
            t0 = time.perf_counter()
            result.metrics.update(trainer.evaluate())
            result.metrics["val_time_s"] = time.perf_counter() - t0


class MetricsCallback(Callback):
    """Rank 0: metrics.jsonl + TensorBoard + one console line per logged step. Other ranks: nothing."""

    def __init__(self, writer: MetricsWriter | None, histogram_every: int, out=sys.stdout):
        self.writer, self.histogram_every, self.out = writer, histogram_every, out
        self.process = psutil.Process()

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.metrics is None or self.writer is None:
            return
        m = result.metrics
        m["mem_rss_gib"] = self.process.memory_info().rss / 2**30
        if torch.cuda.is_available():
            m["mem_cuda_max_gib"] = torch.cuda.max_memory_allocated() / 2**30
        hist = result.histograms if (result.step % self.histogram_every == 0 or trainer.is_last_step) else {}
        self.writer.write(result.step, m, hist)
        self.out.write(self.console_line(trainer, m) + "\n")
        self.out.flush()

    @staticmethod
    def console_line(trainer: Trainer, m: dict) -> str:
        total = trainer.cfg.train.max_steps
        parts = [f"step {trainer.step}/{total} ({100 * trainer.step / total:.0f}%)", f"loss {m['loss']:.4f}"]
        if "lm_loss" in m and m["lm_loss"] != m["loss"]:
            parts.append(f"lm {m['lm_loss']:.4f}")
        parts.append(f"lr {m['lr']:.2e}")
        if "grad_norm" in m:
            parts.append(f"gnorm {m['grad_norm']:.3f}")
        parts.append(f"{format_count(m['tokens_per_s'])} tok/s")
        parts.append(f"{m['step_time_s']:.2f} s/step")
        if "mfu" in m:
            parts.append(f"MFU {100 * m['mfu']:.1f}%")
        if "val_loss" in m:
            parts.append(f"val {m['val_loss']:.4f} (ppl {m['val_ppl']:.1f})")
        parts.append(f"ETA {format_duration(trainer.eta_seconds())}")
        return " | ".join(parts)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class CheckpointCallback(Callback):
    def __init__(self, config_yaml: str):
        self.config_yaml = config_yaml
        self.last_saved = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_saved = trainer.start_step if trainer.start_step > 0 else None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        c = trainer.cfg.checkpoint
        if (c.every and trainer.step % c.every == 0) or (c.save_at_end and trainer.is_last_step):
            if trainer.bad_steps.consecutive:
                # Never replace the last good checkpoint with one taken inside a run of non-finite steps.
                if trainer.dist.rank == 0:
                    print(f"checkpoint of step {trainer.step} not written: the step had a non-finite loss",
                          flush=True)
                return
            self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        if self.last_saved == trainer.step:
            return
        state = {
            "format_version": 1,
            "step": trainer.step,
            "data": trainer.train_data.state_dict(),
            "tokens_seen": trainer.step * trainer.tokens_per_step,
            "world_size": trainer.dist.world_size,
            "skipped_steps": trainer.bad_steps.skipped_total,
        }
        t0 = time.perf_counter()
        path = save_checkpoint(trainer.engine, trainer.cfg.run_dir, trainer.step, state, self.config_yaml,
                               trainer.cfg.checkpoint.keep_last, external=trainer.external)
        self.last_saved = trainer.step
        if trainer.dist.rank == 0:
            print(f"checkpoint {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
