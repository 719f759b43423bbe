"""Rank 0: every logged step's metrics into run_dir/metrics.jsonl and TensorBoard, plus one console line.

Runs after the callbacks that add metrics (validation, downstream eval) and before the checkpoint, so a
step's record is complete and written before its checkpoint exists. Other ranks write nothing.
"""
from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import psutil
import torch

from pipeline.train.callbacks.callback import Callback
from pipeline.train.metrics_writer import MetricsWriter
from pipeline.train.tensorboard_tags import TagMap

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


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


def console_line(step: int, total: int, m: dict) -> str:
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)", f"loss {m['loss']:.4f}"]
    if "lm_loss" in m and m["lm_loss"] != m["loss"]:
        parts.append(f"lm {m['lm_loss']:.4f}")
    parts.append(f"lr {m['lr']:.2e}")
    if "grad_norm" in m:
        parts.append(f"gnorm {m['grad_norm']:.3f}")
    if "tokens_per_s" in m:
        parts.append(f"{format_count(m['tokens_per_s'])} tok/s")
        parts.append(f"{m['step_time_s']:.2f} s/step")
    if "mfu" in m:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if "val_loss" in m:
        parts.append(f"val {m['val_loss']:.4f} (ppl {m['val_ppl']:.1f})")
    parts.append(f"ETA {format_duration(m.get('eta_s', float('nan')))}")
    return " | ".join(parts)


class MetricsCallback(Callback):
    priority = -50

    def __init__(self, run_dir: str, tensorboard: bool, histogram_every: int, rank: int, out=sys.stdout,
                 n_layers: int | None = None, layout: dict | None = None):
        """`n_layers`: the model's trunk depth (TensorBoard labels the MTP modules' router rows as such);
        `layout`: the custom-scalars layout (pipeline/train/tensorboard_layout.py) written at start."""
        self.run_dir, self.tensorboard, self.histogram_every = run_dir, tensorboard, histogram_every
        self.rank, self.out = rank, out
        self.tag, self.layout = TagMap(n_layers), layout
        self.writer: MetricsWriter | None = None
        self.process = psutil.Process()

    def on_train_start(self, trainer: "Trainer") -> None:
        if self.rank == 0:
            # On a resume, records after the restored step (left by the killed run) are dropped.
            self.writer = MetricsWriter(self.run_dir, self.tensorboard,
                                        resume_step=trainer.step if trainer.resumed else None,
                                        tag=self.tag, layout=self.layout)

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if result.metrics is None or self.writer is None:
            return
        m = result.metrics
        m["mem_rss_gib"] = self.process.memory_info().rss / 2**30
        if torch.cuda.is_available():
            m["mem_cuda_max_gib"] = torch.cuda.max_memory_allocated() / 2**30
        hist = result.histograms if (result.step % self.histogram_every == 0 or trainer.is_last_step) else {}
        self.writer.write(result.step, m, hist)
        self.out.write(console_line(trainer.step, trainer.cfg.train.max_steps, m) + "\n")
        self.out.flush()

    def close(self, trainer: "Trainer") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
