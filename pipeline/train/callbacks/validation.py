"""Validation loss on the fixed validation batches every `eval.every` steps and at the last step (`eval.at_end`).

The loss is the token-weighted mean next-token cross-entropy of the main head over all ranks' batches (the
same number launch/eval.py reports for a checkpoint), recorded as val_loss / val_ppl / val_time_s. With a
data mixture, each source's is recorded as val/<name>/loss and val_loss is their mean weighted by the
mixture weights (the loss on the training distribution; a zero-weight source is measured but not counted).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from pipeline.data.loader import ValBatches, ValSet, to_tensors
from pipeline.train.callbacks.callback import Callback

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class ValidationCallback(Callback):
    priority = 50

    def __init__(self, val_data: list[ValSet] | None, every: int, at_end: bool):
        self.val_data, self.every, self.at_end = val_data, every, at_end

    def due(self, trainer: "Trainer") -> bool:
        return self.val_data is not None and ((self.every and trainer.step % self.every == 0) or
                                              (self.at_end and trainer.is_last_step))

    def needs_metrics(self, trainer: "Trainer") -> bool:
        return self.due(trainer)

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if self.due(trainer):
            t0 = time.perf_counter()
            for name, value in self.evaluate(trainer).items():
                trainer.record_metric(name, value)
            trainer.record_metric("val_time_s", time.perf_counter() - t0)

    def evaluate(self, trainer: "Trainer") -> dict[str, float]:
        out, weighted, weight = {}, 0.0, 0.0
        for val in self.val_data:
            loss = self.loss(trainer, val.batches)
            if val.name is None:
                return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
            out[f"val/{val.name}/loss"] = loss
            weighted, weight = weighted + val.weight * loss, weight + val.weight
        loss = weighted / weight
        return {**out, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    @torch.no_grad()
    def loss(self, trainer: "Trainer", batches: ValBatches) -> float:
        engine, device = trainer.engine, trainer.dist.device
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for batch in batches:
            tensors = to_tensors(batch, device)
            out = engine(**tensors)
            n = (tensors["labels"] != -100).sum()
            total += torch.stack([out.losses["lm"].double().cpu() * n.cpu(), n.double().cpu()])
        if trainer.dist.world_size > 1:
            total = total.to(device if trainer.dist.backend == "nccl" else torch.device("cpu"))
            dist.all_reduce(total)
            total = total.cpu()
        engine.train()
        return float(total[0] / total[1].clamp(min=1))
