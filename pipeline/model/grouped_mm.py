"""F.grouped_mm as an opaque custom op, for torch.compile.

Why: torch's fake-tensor rule for grouped_mm accepts bf16 only (torch 2.13), so a compiled block with fp32
experts fails to trace, although the eager CPU kernel runs fp32. Wrapped as a custom op, dynamo and inductor
see one call with a known output shape and run the same eager kernels in forward and backward; the backward
is grouped_mm's derivative (grad_a = g b^T, grad_b = a^T g per group, the same GEMMs as eager), so the values
equal the eager path to rounding (tests/pipeline/train/test_compile.py). Eager code calls F.grouped_mm
directly; only traced code goes through these ops. Op names are versioned by what they compute: inductor's
cache keys a compiled backward by the forward graph, not by the Python backward registered here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("olmoe::expert_grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [N, K] grouped by rows (group g ends at offs[g]), w [G, K, M] -> [N, M]."""
    return F.grouped_mm(x, w, offs=offs)


@grouped_mm.register_fake
def _(x, w, offs):
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("olmoe::grouped_mm_weight_grad_t", mutates_args=())
def grouped_mm_weight_grad_t(grad: torch.Tensor, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Per group g: grad_g^T x_g -> [G, M, K], the weight gradient of grouped_mm transposed. Computed in this
    layout because the weights enter as transposed views of [G, M, K] parameters (GroupedExperts): its
    transpose is then exactly the parameter's layout, and autograd stores it without a copy."""
    return F.grouped_mm(grad.transpose(0, 1), x, offs=offs)


@grouped_mm_weight_grad_t.register_fake
def _(grad, x, offs):
    return grad.new_empty(offs.shape[0], grad.shape[1], x.shape[1])


def _setup_context(ctx, inputs, output):
    x, w, offs = inputs
    ctx.save_for_backward(x, w, offs)


def _backward(ctx, grad):
    x, w, offs = ctx.saved_tensors
    grad_x = grouped_mm(grad, w.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_w = grouped_mm_weight_grad_t(grad, x, offs).transpose(1, 2) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)
