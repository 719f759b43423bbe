"""The output head's mean cross-entropy computed one vocabulary chunk at a time, gradient included.

Why: with a ~50k vocabulary the logits [T, V] are the largest activation of the model. The plain path
(Linear -> log_softmax -> nll, then their three backwards) allocates three T x V arrays (logits,
log-probabilities, their gradient) and sweeps them about nine times; on a CPU that memory-bound work costs as
much as the head's GEMMs. Here the forward also computes the gradient, per chunk of vocabulary columns while
the chunk is still in cache:

    pass 1, chunk c:  L_c = h W_c^T (GEMM), target logits read from L_c, E_c = exp(L_c - rowmax_c) in place,
                      lse_c = rowmax_c + log(sum E_c)
    lse = logsumexp_c(lse_c);  loss = sum_valid(lse - L[target]) / N
    pass 2, chunk c:  with G_c = f_c E_c - s onehot(target), s = valid / N, f_c = s exp(rowmax_c - lse):
                      dh += f_c (E_c W_c),  dW_c = E_c^T (f_c h);  then dh -= s W[target], dW[target] -= s h

so T x V is written once and read once and no log-probability array exists; the backward only scales dh and
dW by the incoming gradient. The same GEMMs as the plain path (three per call), so the same FLOPs; the sums
are ordered per chunk, so results equal the plain path to rounding (tests/pipeline/model/
test_linear_cross_entropy.py). Used for fp32 / fp64 without autocast; anything else (bf16 weights, autocast)
keeps the plain path and its exact numerics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import cpu_gemm

IGNORE = -100
CHUNK_ELEMENTS = 1 << 20        # ~4 MiB of fp32 logits per chunk: stays in cache between the GEMM and its use


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over targets != -100 (at least fp32); 0 (still in the graph) when nothing is valid."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


def _chunk_columns(rows: int, vocab: int) -> int:
    return min(vocab, max(256, CHUNK_ELEMENTS // max(rows, 1) // 128 * 128))


def _chunked_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grads: bool):
    """h [T, D], weight [V, D], targets [T] -> (mean loss, dh [T, D] | None, dW [V, D] | None)."""
    rows, vocab = h.shape[0], weight.shape[0]
    valid = targets != IGNORE
    count = valid.sum().clamp(min=1)
    step = _chunk_columns(rows, vocab)
    starts = range(0, vocab, step)
    chunks, maxes, lses = [], [], []
    target_logit = torch.zeros(rows, dtype=h.dtype, device=h.device)
    for start in starts:
        logits = cpu_gemm.linear(h, weight[start:start + step])              # [T, c]
        col = targets - start
        inside = (col >= 0) & (col < logits.shape[1])
        picked = logits.gather(1, col.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        target_logit = torch.where(inside, picked, target_logit)
        # exp(L - rowmax) in place: the one exp per logit (the plain path takes two, forward and backward)
        row_max = logits.amax(dim=1)
        sum_exp = logits.sub_(row_max.unsqueeze(1)).exp_().sum(dim=1)
        lses.append(row_max + sum_exp.log())
        if with_grads:
            chunks.append(logits)
            maxes.append(row_max)
    lse = torch.logsumexp(torch.stack(lses, dim=1), dim=1) if len(lses) > 1 else lses[0]
    loss = torch.where(valid, lse - target_logit, torch.zeros_like(lse)).sum() / count
    if not with_grads:
        return loss, None, None
    # G = f_c * E_c - scale * onehot(target) with the per-row factor f_c = scale * exp(rowmax_c - lse). The row
    # factors go onto the small [T, D] operands instead of the [T, c] chunk, and the one-hot part is a row
    # gather / scatter: no further pass over the logits.
    scale = valid.to(h.dtype) / count                                          # d loss / d (row's CE)
    shift = lse - scale.log()                                                  # +inf on ignored rows -> f = 0
    safe_targets = targets.masked_fill(~valid, 0)
    dh = -scale.unsqueeze(1) * weight[safe_targets]
    dw = torch.empty_like(weight)
    for start, e, row_max in zip(starts, chunks, maxes):
        f = (row_max - shift).exp().unsqueeze(1)
        w_chunk = weight[start:start + step]
        dh.addcmul_(cpu_gemm.mm(e, w_chunk), f)
        cpu_gemm.mm(e.T, h * f, out=dw[start:start + step])
    dw.index_add_(0, safe_targets, -scale.unsqueeze(1) * h)
    return loss, dh, dw


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets):
        loss, dh, dw = _chunked_loss(h, weight, targets, with_grads=True)
        # Held on ctx, not save_for_backward: they are neither inputs nor outputs, and dropping them in
        # backward lets autograd take dW as the parameter's .grad without a copy.
        ctx.grads = (dh, dw)
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice (its gradients are computed once, "
                               "in the forward)")
        dh, dw = ctx.grads
        ctx.grads = None
        return dh.mul_(grad), dw.mul_(grad), None


def fused_applies(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32 / fp64 operands of one dtype and no autocast: the cases where the chunked path reproduces the
    plain one's arithmetic (under autocast or bf16 the plain path rounds logits and gradients differently)."""
    device = hidden.device.type
    return (hidden.dtype == weight.dtype and hidden.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(device))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of the logits hidden @ weight^T over targets != -100 (= cross_entropy(F.linear(...)))."""
    if not fused_applies(hidden, weight):
        return cross_entropy(F.linear(hidden, weight), targets)
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, t)
    return _chunked_loss(h, weight, t, with_grads=False)[0]


class OutputHead(nn.Linear):
    """The V-way output Linear (parameter `weight`, as nn.Linear) with a `loss` that never materialises the
    log-probabilities. `loss` goes through the module call, so hooks on the head (ZeRO-3's parameter gathering)
    run as they do for the logits."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return cpu_gemm.linear(hidden, self.weight)      # = F.linear; oneDNN where nothing records
        return linear_cross_entropy(hidden, self.weight, targets)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(hidden, targets)
