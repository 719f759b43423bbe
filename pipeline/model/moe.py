"""Dropless mixture of SwiGLU experts with a softmax top-k router (OLMoE).

Router: Linear -> softmax -> top-k, gates NOT renormalised (OLMoE). Dropless: every token reaches its k
experts. Dispatch sorts the (token, slot) assignments by expert, so each expert sees one contiguous slice;
expert weights are stacked [E, ...] tensors, which is what an expert-parallel step shards along dim 0.
Auxiliary losses (OLMoE / Switch Transformer):
  load balancing  lb = E * sum_e f_e * P_e,  f_e = assignments to e / (T*k),  P_e = mean_t p_{t,e}
  router z-loss   z  = mean_t (logsumexp_e logits_{t,e})^2
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import cpu_gemm, expert_gemm
from pipeline.model import grouped_mm as compiled_grouped_mm


@dataclass
class RouterStats:
    lb: torch.Tensor        # scalar, unweighted
    z: torch.Tensor         # scalar, unweighted
    counts: torch.Tensor    # [E] assignments per expert (long)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-style loss; probs [T, E] fp32, counts [E]. Equals 1 for perfectly uniform routing."""
    n_tokens, n_experts = probs.shape
    frac = counts.to(probs.dtype) / (n_tokens * top_k)
    return n_experts * torch.dot(frac, probs.mean(dim=0))


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


class GroupedExperts(nn.Module):
    """E SwiGLU experts as stacked weights: w_gate, w_up [E, H, D]; w_down [E, D, H]."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, init_std: float = 0.02):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w_up = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        for p in (self.w_gate, self.w_up, self.w_down):
            p._moe_expert = True  # lets a parallelize step / optimizer find expert weights
        self.reset_parameters(init_std)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        for p in (self.w_gate, self.w_up, self.w_down):
            nn.init.trunc_normal_(p, 0.0, std, -3 * std, 3 * std)

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x_sorted [N, D] grouped by expert (counts[e] rows for expert e, in order) -> [N, D]."""
        dtype = _grouped_mm_dtype(x_sorted, self.w_gate)
        if dtype is not None:
            return self._forward_grouped(x_sorted.to(dtype), counts, dtype)
        return self._forward_loop(x_sorted, counts)

    def _forward_grouped(self, x: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One grouped GEMM per projection (torch's grouped_mm: CPU kernels, CUTLASS on sm90 GPUs). The
        group offsets stay on the device: no host sync. Identical results to the loop (same GEMMs, fp32).
        fp32 on a CPU where oneDNN's GEMMs are faster: pipeline/model/expert_gemm.py."""
        offs = counts.cumsum(0).to(torch.int32)
        if (cpu_gemm.onednn_applies(x, self.w_gate) and expert_gemm.pays(x, self.w_gate)
                and not torch.compiler.is_compiling()):
            sizes = counts.tolist()          # a host sync, free on the CPU this path runs on
            h = (F.silu(expert_gemm.expert_linear(x, self.w_gate, offs, sizes))
                 * expert_gemm.expert_linear(x, self.w_up, offs, sizes))
            return expert_gemm.expert_linear(h, self.w_down, offs, sizes)
        w_gate, w_up, w_down = (w.to(dtype).transpose(1, 2) for w in (self.w_gate, self.w_up, self.w_down))
        # traced (torch.compile): the same kernels behind a custom op, see pipeline/model/grouped_mm.py
        mm = compiled_grouped_mm.grouped_mm if torch.compiler.is_compiling() else _eager_grouped_mm
        h = F.silu(mm(x, w_gate, offs)) * mm(x, w_up, offs)
        return mm(h, w_down, offs)

    def _forward_loop(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Fallback (fp64, odd widths, GPUs without grouped GEMM): one GEMM chain per expert."""
        outs = []
        # unbind, not w[e]: the backward of E separate w[e] selects materialises E full-size [E, ...] zero
        # gradients (O(E^2) memory traffic, 60x the GEMMs at E=64); unbind's backward stacks them once.
        # counts.tolist() is a host sync (the split sizes; an EP all-to-all needs them anyway).
        # Empty experts still run (on 0 rows) so every expert weight is part of the graph (zero grad).
        gates, ups, downs = self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0)
        for xe, wg, wu, wd in zip(x_sorted.split(counts.tolist()), gates, ups, downs):
            h = F.silu(xe @ wg.t()) * (xe @ wu.t())
            outs.append(h @ wd.t())
        return torch.cat(outs, dim=0)


def _eager_grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return F.grouped_mm(x, w, offs=offs)


def _grouped_mm_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype | None:
    """The dtype to run F.grouped_mm in, or None where it cannot run: it needs fp32/bf16/fp16 operands of one
    dtype (under autocast: the autocast dtype), rows of a multiple of 16 bytes, and on GPUs bf16 on sm90+."""
    if not hasattr(F, "grouped_mm") or x.shape[0] == 0:
        return None
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16) or (w.dtype != dtype and
                                                                       not torch.is_autocast_enabled(device)):
        return None
    itemsize = dtype.itemsize
    if (w.shape[1] * itemsize) % 16 or (w.shape[2] * itemsize) % 16:
        return None
    if device == "cuda":
        return dtype if dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0) else None
    return dtype if device == "cpu" else None


class MoE(nn.Module):
    def __init__(self, d_model: int, n_experts: int, top_k: int, hidden: int):
        super().__init__()
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = GroupedExperts(n_experts, d_model, hidden)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [T, D] -> logits [T, E], probs [T, E] fp32, gate weights [T, k] fp32, expert ids [T, k]."""
        logits = self.router(x)
        probs = logits.float().softmax(dim=-1)
        gates, experts = probs.topk(self.top_k, dim=-1)  # no renormalisation (OLMoE)
        return logits, probs, gates, experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, gates, experts = self.route(x)
        flat_experts = experts.reshape(-1)                       # [T*k], slot-major per token
        order = flat_experts.argsort(stable=True)
        token_idx = order // self.top_k
        # = bincount(minlength=E), but of a fixed [E] shape (bincount's is data-dependent: a graph break)
        counts = torch.zeros(self.n_experts, dtype=torch.long, device=x.device).index_add_(
            0, flat_experts, torch.ones_like(flat_experts))
        y = self.experts(x[token_idx], counts)
        # the k expert outputs of a token are combined in the input's dtype (fp32 under autocast)
        y = y.to(x.dtype) * gates.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
        out = torch.zeros_like(x).index_add_(0, token_idx, y)
        stats = RouterStats(lb=load_balancing_loss(probs, counts, self.top_k), z=router_z_loss(logits),
                            counts=counts.detach())
        return out.reshape(shape), stats
