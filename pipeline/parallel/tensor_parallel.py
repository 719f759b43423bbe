"""Megatron-style tensor parallelism (TP) with megatron-core's layers, run as shipped (fp32, no sequence
parallelism, gather_output=False / input_is_parallel=True: on this path megatron-core 0.16 needs no torch.cuda,
unlike its GPTModel, MoELayer and CUDA RNG tracker, so it also runs over gloo on CPU).

- attention: q, k, v ColumnParallelLinear (heads split over tp), o RowParallelLinear (input is parallel);
  OLMoE's QK-norm normalises the WHOLE q / k vector (all heads), so the TP norm all-reduces the sum of
  squares of the local slices before normalising them with its slice of the weight.
- dense SwiGLU: gate, up column-parallel; down row-parallel.
- input embedding: VocabParallelEmbedding; output head: ColumnParallelLinear over the (padded) vocabulary
  whose `loss` uses vocab_parallel_cross_entropy, so full logits never exist on one rank.
MoE layers stay replicated over tp (combine experts with ep x dp instead). Swapped modules keep the dense
parameter names and mark each shard (shard_info) so tests compare against slices of a single-process model.
Importing this module imports megatron-core (~6 s); parallelize imports it only when tp > 1.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           vocab_parallel_cross_entropy)
from torch import nn

from pipeline.model.attention import Attention
from pipeline.model.mlp import SwiGLU
from pipeline.model.norms import RMSNorm
from pipeline.model.rope import apply_rope
from pipeline.parallel.shard_info import mark_sharded

IGNORE = -100


def megatron_config(tp: int, dtype: torch.dtype = torch.float32):
    # perform_initialization=False: weights are copied from the built (seeded) model, which also keeps
    # megatron's CUDA RNG tracker out of the way on CPU.
    return ModelParallelConfig(tensor_model_parallel_size=tp, params_dtype=dtype, use_cpu_initialization=True,
                               perform_initialization=False, sequence_parallel=False,
                               gradient_accumulation_fusion=False)


def _no_init(_weight: torch.Tensor) -> None:
    return None


def _load_shard(param: torch.Tensor, full: torch.Tensor, dim: int, rank: int, tp: int) -> None:
    size = full.shape[dim] // tp
    with torch.no_grad():
        param.copy_(full.detach().narrow(dim, rank * size, size))
    mark_sharded(param, dim, rank * size, (rank + 1) * size, full.shape[dim])


class _OutsideCpuAutocast:
    """megatron-core's linear autograd function restores only CUDA autocast state in its backward (its
    custom_fwd/custom_bwd are fixed to device_type="cuda"), so under CPU autocast the backward multiplies a
    bf16 gradient by the fp32 weight and fails. On CPU these layers therefore run outside autocast in their
    parameter dtype (fp32: exact, not bf16 compute); on CUDA they run under autocast in bf16 as shipped."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.to(self.weight.dtype), *args, **kwargs)
        return super().forward(x, *args, **kwargs)


class ColumnParallel(_OutsideCpuAutocast, ColumnParallelLinear):
    pass


class RowParallel(_OutsideCpuAutocast, RowParallelLinear):
    pass


def column_parallel(dense: nn.Linear, config, tp_rank: int, cls=None):
    cls = cls or ColumnParallel
    layer = cls(dense.in_features, dense.out_features, config=config, init_method=_no_init, bias=False,
                gather_output=False)
    _load_shard(layer.weight, dense.weight, 0, tp_rank, config.tensor_model_parallel_size)
    return layer


def row_parallel(dense: nn.Linear, config, tp_rank: int):
    layer = RowParallel(dense.in_features, dense.out_features, config=config, init_method=_no_init,
                              bias=False, input_is_parallel=True, skip_bias_add=False)
    _load_shard(layer.weight, dense.weight, 1, tp_rank, config.tensor_model_parallel_size)
    return layer


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; the backward also sums, because every rank uses the result on its own slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class TensorParallelRMSNorm(nn.Module):
    """RMSNorm of a vector split over tp ranks (each rank holds a slice and its slice of the weight)."""

    def __init__(self, dense: RMSNorm, tp_rank: int, tp: int, group):
        super().__init__()
        self.eps, self.group, self.full_dim = dense.eps, group, dense.weight.numel()
        size = self.full_dim // tp
        self.weight = nn.Parameter(dense.weight.detach()[tp_rank * size:(tp_rank + 1) * size].clone())
        mark_sharded(self.weight, 0, tp_rank * size, (tp_rank + 1) * size, self.full_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        sum_sq = _AllReduceSum.apply(xf.square().sum(dim=-1, keepdim=True), self.group)
        y = xf * torch.rsqrt(sum_sq / self.full_dim + self.eps) * self.weight.to(xf.dtype)
        return y.to(x.dtype)


class TensorParallelAttention(nn.Module):
    def __init__(self, dense: Attention, config, tp_rank: int, tp_group):
        super().__init__()
        tp = config.tensor_model_parallel_size
        self.n_heads, self.head_dim = dense.n_heads // tp, dense.head_dim
        self.q_proj = column_parallel(dense.q_proj, config, tp_rank)
        self.k_proj = column_parallel(dense.k_proj, config, tp_rank)
        self.v_proj = column_parallel(dense.v_proj, config, tp_rank)
        self.o_proj = row_parallel(dense.o_proj, config, tp_rank)
        norm = dense.q_norm is not None
        self.q_norm = TensorParallelRMSNorm(dense.q_norm, tp_rank, tp, tp_group) if norm else None
        self.k_norm = TensorParallelRMSNorm(dense.k_norm, tp_rank, tp, tp_group) if norm else None

    def forward(self, x: torch.Tensor, rope, attn_mask: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        if kv_cache is not None:
            raise NotImplementedError("incremental decoding is not tensor-parallel; generate with tp 1")
        b, s, _ = x.shape
        q, k, v = self.q_proj(x)[0], self.k_proj(x)[0], self.v_proj(x)[0]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))[0]


class TensorParallelSwiGLU(nn.Module):
    def __init__(self, dense: SwiGLU, config, tp_rank: int):
        super().__init__()
        self.w_gate = column_parallel(dense.w_gate, config, tp_rank)
        self.w_up = column_parallel(dense.w_up, config, tp_rank)
        self.w_down = row_parallel(dense.w_down, config, tp_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)[0]) * self.w_up(x)[0])[0]


def vocab_parallel_embedding(dense: nn.Embedding, config, tp_rank: int):
    layer = VocabParallelEmbedding(dense.num_embeddings, dense.embedding_dim, init_method=_no_init,
                                   config=config)
    _load_shard(layer.weight, dense.weight, 0, tp_rank, config.tensor_model_parallel_size)
    return layer


class VocabParallelHead(ColumnParallel):
    """Output head split over the (padded) vocabulary: forward -> this rank's logit columns [..., V/tp];
    loss -> mean CE through vocab_parallel_cross_entropy, never materialising full logits."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden)[0]

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean CE over targets != -100, as pipeline.model.olmoe.cross_entropy."""
        valid = targets != IGNORE
        logits = self(hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # at least fp32
        per_token = vocab_parallel_cross_entropy(logits, targets.masked_fill(~valid, 0))
        return (per_token * valid).sum() / valid.sum().clamp(min=1)


def vocab_parallel_head(dense: nn.Linear, config, tp_rank: int) -> VocabParallelHead:
    return column_parallel(dense, config, tp_rank, cls=VocabParallelHead)
