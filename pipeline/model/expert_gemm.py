"""The experts' projection on CPUs where oneDNN runs fp32 GEMMs faster than torch's grouped_mm
(pipeline/model/cpu_gemm.py says when and why).

    y_g = x_g w_g^T  for each expert g (x grouped by expert, counts[g] rows each; w [G, N, K], nn.Linear layout)

Forward and the input gradient (dx_g = dy_g w_g) go one expert at a time through oneDNN: on the d512 peer
shape (64 experts, ~64 rows each) that is 9.4 ms against grouped_mm's 15.4 for a forward projection, 12.1
against 15.3 for its input gradient. The weight gradient (dw_g = dy_g^T x_g, reduction over the ~64 rows) stays
one F.grouped_mm, which writes the [G, N, K] parameter layout directly and is as fast there. Same GEMMs as
F.grouped_mm, so equal results to fp32 rounding (tests/pipeline/model/test_cpu_gemm.py).

Each oneDNN call costs ~15 us before any arithmetic, so the loop pays only when the experts' GEMMs are large.
Measured crossover (forward projection, one thread): ~16 rows per expert at E 64, D 512, H 256 and ~200 at
E 16, D 128, H 64, both about 2^21 multiply-adds per expert; below it (decoding a few tokens, small models)
grouped_mm's single call is up to 6x faster. `pays` draws the line there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.model import cpu_gemm


class ExpertLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.save_for_backward(x, w, offs)
        ctx.sizes = sizes
        return torch.cat([cpu_gemm.linear(xg, wg) for xg, wg in zip(x.split(sizes), w.unbind(0))])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w, offs = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.cat([cpu_gemm.mm(gg, wg) for gg, wg in zip(grad.split(ctx.sizes), w.unbind(0))])
        if ctx.needs_input_grad[1]:
            grad_w = F.grouped_mm(grad.T, x, offs=offs)
        return grad_x, grad_w, None, None


MIN_MACS_PER_EXPERT = 1 << 21


def pays(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether x [T, K] through the experts w [G, N, K] is large enough for the oneDNN loop (see above)."""
    return x.shape[0] * w.shape[1] * w.shape[2] >= MIN_MACS_PER_EXPERT * w.shape[0]


def expert_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """x [T, K] grouped by expert (sizes[g] rows for expert g, offs = their int32 cumsum), w [G, N, K] -> [T, N]."""
    return ExpertLinear.apply(x, w, offs, sizes)
