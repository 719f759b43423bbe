"""Optimizers for the (row-sharded) Over-Encoding table. Each rank steps only its own shard; the table
never enters ZeRO / DeepSpeed, so its state lives only on the owner (paper §3.3).

Two choices (ParallelConfig.table_optimizer):
- "adamw": torch AdamW on the local shard. Every row is updated every step: rows not looked up get a zero
  gradient, so their moments decay and the remaining momentum keeps moving them, and weight decay applies
  to all rows. This is exactly AdamW on the full table, restricted to the shard (paper-faithful: the paper
  trains the tables with the model's AdamW).
- "row_sparse_adam": lazy Adam. Only rows touched in the step (non-zero gradient row) update their moments
  and weights; untouched rows keep weights and moments frozen until they are looked up again. Moments and
  bias correction follow torch.optim.SparseAdam (global step count, eps added to sqrt(v) before the
  bias-correction factor is folded into the step size); decoupled weight decay, when set, applies to the
  touched rows only. Per-step work is proportional to the rows touched (<= tokens x tables) instead of the
  table size, at the price of different dynamics for rare n-grams (no momentum drift, no decay while
  unseen). Rows whose summed gradient is exactly zero count as untouched.

  It also takes SPARSE gradients (see `use_sparse_table_grads`): the lookup then hands back only the
  looked-up rows, so neither the backward (no table-sized zero fill) nor the step (no scan for non-zero rows)
  touches the rest of the table. The update is identical to the dense-gradient path.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """Adam on 2-D parameters that updates only rows with a non-zero gradient (see module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"RowSparseAdam: invalid lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"RowSparseAdam: parameters must be 2-D tables, got shape {tuple(p.shape)}")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, g = _touched_rows(p.grad)
                if rows.numel() == 0:
                    continue
                step = state["step"].item()
                # gathered copies of the touched rows, updated in place and scattered back: three random-access
                # passes over the table-sized tensors each way, no other allocation of that size
                m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                w = p.index_select(0, rows)
                if wd:
                    w.mul_(1 - lr * wd)
                w.addcdiv_(m, v.sqrt_().add_(eps), value=-step_size)     # v is written back already
                p.index_copy_(0, rows, w)
        return loss


def _touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, their gradient rows) of the rows with a non-zero summed gradient, in ascending order."""
    if grad.is_sparse:
        if grad.is_coalesced() or _strictly_increasing(grad._indices()[0]):
            rows, g = grad._indices()[0], grad._values()     # one entry per row already (OE's deduped lookup)
        else:
            grad = grad.coalesce()                           # sums duplicate rows, sorts the indices
            rows, g = grad.indices()[0], grad.values()
        keep = g.ne(0).any(dim=1)
        if bool(keep.all()):          # the usual case: skip two copies of the step's gradient rows
            return rows, g
        return rows[keep], g[keep]
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)


def _strictly_increasing(rows: torch.Tensor) -> bool:
    """One pass instead of coalesce's sort. Needed because autograd's gradient accumulation drops the
    is_coalesced flag of a sparse gradient it stores without copying."""
    return rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())


def use_sparse_table_grads(model: torch.nn.Module, enabled: bool = True) -> int:
    """Make every Over-Encoding lookup of `model` (plain or row-sharded) produce sparse table gradients.
    Only for table_optimizer row_sparse_adam: torch AdamW rejects sparse gradients. Returns the module count."""
    count = 0
    for module in model.modules():
        if hasattr(module, "sparse_grad") and hasattr(module, "lookup"):
            module.sparse_grad = enabled
            count += 1
    return count


TABLE_OPTIMIZERS = ("adamw", "row_sparse_adam")


def build_table_optimizer(kind: str, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                          eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if kind == "adamw":
        # the fused kernel (CPU and CUDA): one pass over weight, gradient and moments instead of torch's
        # default per-op loop on CPU; the table is the largest tensor stepped, ~5x faster (docs/performance.md)
        fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if kind == "row_sparse_adam":
        return RowSparseAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"parallel.table_optimizer: {kind!r} is not one of {', '.join(TABLE_OPTIMIZERS)}")
