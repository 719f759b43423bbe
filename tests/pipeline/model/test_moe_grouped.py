"""GroupedExperts: the grouped-GEMM path equals the per-expert loop (forward and every gradient), including
experts that receive no rows; the loop is the fallback where grouped_mm cannot run."""
from __future__ import annotations

import pytest
import torch

from pipeline.model.moe import GroupedExperts, _grouped_mm_dtype


def test_grouped_gemm_matches_loop_with_empty_experts():
    torch.manual_seed(0)
    experts = GroupedExperts(n_experts=6, d_model=16, hidden=12)
    counts = torch.tensor([5, 0, 7, 1, 0, 3])
    x = torch.randn(int(counts.sum()), 16, requires_grad=True)
    assert _grouped_mm_dtype(x, experts.w_gate) == torch.float32
    g = torch.randn(int(counts.sum()), 16)
    results = []
    for run in (experts._forward_loop, experts.forward):
        y = run(x, counts)
        grads = torch.autograd.grad(y, [x, experts.w_gate, experts.w_up, experts.w_down], g)
        results.append((y, *grads))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert results[1][2][1].abs().sum() == 0 and results[1][2][4].abs().sum() == 0   # empty experts: zero grad


@pytest.mark.parametrize("dtype, d_model, rows", [(torch.float64, 16, 4), (torch.float32, 6, 4),
                                                  (torch.float32, 16, 0)])
def test_loop_fallback_where_grouped_gemm_cannot_run(dtype, d_model, rows):
    experts = GroupedExperts(n_experts=2, d_model=d_model, hidden=8).to(dtype)
    x = torch.randn(rows, d_model, dtype=dtype)
    assert _grouped_mm_dtype(x, experts.w_gate) is None
    y = experts(x, torch.tensor([rows, 0]))
    assert y.shape == (rows, d_model) and y.dtype == dtype
