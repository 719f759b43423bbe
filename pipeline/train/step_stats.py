"""Per-step training statistics from the model's outputs, averaged over micro-batches and data-parallel ranks.

- Loss terms: `losses` of every micro-batch (loss, lm, mtp_d / od_j, lb, z), mean over micro-batches and
  ranks (the same averaging DeepSpeed applies to the gradients). Reported as `loss`, `lm_loss`,
  `mtp_1_loss`, `lb_loss`, `z_loss`, ...
- MoE: `expert_counts` [layers, experts] summed over micro-batches and ranks; per layer the load imbalance
  max/mean tokens per expert (1.0 = perfectly balanced) and the count vector for a histogram.
- OE: distinct rows touched per table during the step, on this rank's micro-batches (tables are looked up
  by id, so the union over ranks would need an all-gather of every id; rank 0's count is the cheap proxy).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def loss_metric_name(term: str) -> str:
    return "loss" if term == "loss" else f"{term}_loss"


class StepStats:
    def __init__(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.expert_counts: torch.Tensor | None = None
        self.oe_ids: list[torch.Tensor] = []

    def add(self, output) -> None:
        for key, value in output.losses.items():
            v = value.detach().double()
            self.losses[key] = self.losses[key] + v if key in self.losses else v
        self.micro_batches += 1
        counts = output.stats.get("expert_counts")
        if counts is not None:
            counts = counts.detach().double()
            self.expert_counts = counts if self.expert_counts is None else self.expert_counts + counts
        ids = output.stats.get("oe_ids")
        if ids is not None:
            self.oe_ids.append(ids.detach())

    def reduce(self, world_size: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Collective over all ranks (same keys everywhere). Returns (scalars, expert-count vectors)."""
        keys = sorted(self.losses)
        parts = [torch.stack([self.losses[k] for k in keys])] if keys else []
        if self.expert_counts is not None:
            parts.append(self.expert_counts.flatten())
        flat = torch.cat(parts).cpu()
        if world_size > 1:
            # Collectives must run on the backend's device (CUDA under nccl).
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            flat = flat.to(device)
            dist.all_reduce(flat)
            flat = flat.cpu()
        scalars: dict[str, float] = {}
        denom = self.micro_batches * world_size
        for i, key in enumerate(keys):
            scalars[loss_metric_name(key)] = float(flat[i]) / denom
        histograms: dict[str, torch.Tensor] = {}
        if self.expert_counts is not None:
            counts = flat[len(keys):].view_as(self.expert_counts)
            imbalance = counts.max(dim=1).values / counts.mean(dim=1).clamp(min=1e-12)
            for layer, value in enumerate(imbalance.tolist()):
                scalars[f"moe/imbalance/layer_{layer}"] = value
                histograms[f"moe/expert_counts/layer_{layer}"] = counts[layer]
            scalars["moe/imbalance_max"] = float(imbalance.max())
        if self.oe_ids:
            ids = torch.cat([x.flatten(1) for x in self.oe_ids], dim=1)  # [tables, tokens]
            distinct = [int(torch.unique(row).numel()) for row in ids]
            for t, n in enumerate(distinct):
                scalars[f"oe/distinct_rows/table_{t}"] = float(n)
            scalars["oe/distinct_rows_mean"] = sum(distinct) / len(distinct)
        return scalars, histograms
