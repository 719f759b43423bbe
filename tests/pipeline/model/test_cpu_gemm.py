"""fp32 CPU GEMMs through oneDNN (pipeline/model/cpu_gemm.py) and the experts' path on them
(pipeline/model/expert_gemm.py): equal to torch's matmul / grouped_mm to fp32 rounding, and every case the
oneDNN op cannot take (autograd recording, other dtypes, empty operands, the 'blas' backend) is torch's own.

Tolerance: both sides are fp32 GEMMs that add the same K products in another order. Each sum's rounding
error is below K * 2^-24 * sum|a_i b_i| (about 3e-5 relative at K = 512 in the worst case, ~1e-6 observed),
so 1e-5 of that scale on random operands, and norm-wise 1e-5 for gradients that pass through
several GEMMs and a softmax.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config.model import load_model_config
from pipeline.model import build_model, cpu_gemm, expert_gemm
from pipeline.model.expert_gemm import expert_linear
from pipeline.model.moe import GroupedExperts

needs_onednn = pytest.mark.skipif(not cpu_gemm._ONEDNN, reason="no oneDNN AVX-512 GEMM in this build / CPU")


@needs_onednn
@pytest.mark.parametrize("layout", ["contiguous", "w transposed view", "x transposed view", "both views"])
def test_linear_and_mm_equal_torch(layout):
    torch.manual_seed(0)
    x, w = torch.randn(96, 200), torch.randn(130, 200)
    if layout in ("w transposed view", "both views"):
        w = torch.randn(200, 130).T
    if layout in ("x transposed view", "both views"):
        x = torch.randn(200, 96).T
    with cpu_gemm.use_backend("onednn"):
        y = cpu_gemm.linear(x, w)
        z = cpu_gemm.mm(x, w.T)
    assert y.grad_fn is None and y.shape == (96, 130)
    # |error| scales with sum_i |x_i w_i| (~130 here), not with the entry: atol 1e-4 ~ 1e-6 of it
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z, y, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["grad recording", "float64", "bfloat16", "empty", "blas backend"])
def test_torch_matmul_wherever_onednn_cannot_run(case):
    torch.manual_seed(0)
    dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(case, torch.float32)
    x, w = torch.randn(0 if case == "empty" else 8, 16, dtype=dtype), torch.randn(12, 16, dtype=dtype)
    if case == "grad recording":
        w.requires_grad_(True)
    with cpu_gemm.use_backend("blas" if case == "blas backend" else "auto"):
        y = cpu_gemm.linear(x, w)
    torch.testing.assert_close(y, x @ w.T, rtol=0, atol=0)              # bitwise: torch's own kernel
    assert (y.grad_fn is not None) == (case == "grad recording")
    assert not cpu_gemm.onednn_applies(x.to(torch.bfloat16))


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="cpu_gemm backend 'mkl'"):
        with cpu_gemm.use_backend("mkl"):
            pass
    with cpu_gemm.use_backend("blas"):
        assert cpu_gemm.backend() == "blas"
    assert cpu_gemm.backend() == ("onednn" if cpu_gemm._ONEDNN else "blas")


@needs_onednn
def test_expert_linear_equals_grouped_mm_with_empty_experts():
    torch.manual_seed(0)
    counts = torch.tensor([5, 0, 7, 1, 0, 3, 40])
    offs = counts.cumsum(0).to(torch.int32)
    w = torch.randn(7, 24, 32, requires_grad=True)
    x = torch.randn(int(counts.sum()), 32, requires_grad=True)
    g = torch.randn(int(counts.sum()), 24)
    with cpu_gemm.use_backend("onednn"):
        y = expert_linear(x, w, offs, counts.tolist())
        grads = torch.autograd.grad(y, [x, w], g)
    y_ref = F.grouped_mm(x, w.transpose(1, 2), offs=offs)
    ref = torch.autograd.grad(y_ref, [x, w], g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grads[1][1].abs().sum() == 0 and grads[1][4].abs().sum() == 0 and grads[1][6].abs().sum() > 0


@needs_onednn
def test_grouped_experts_take_the_onednn_path_in_fp32_only(monkeypatch):
    monkeypatch.setattr(expert_gemm, "MIN_MACS_PER_EXPERT", 1)              # this shape is below the line
    experts = GroupedExperts(n_experts=4, d_model=16, hidden=8)
    counts = torch.tensor([3, 0, 2, 5])
    x = torch.randn(10, 16, requires_grad=True)
    def last_op(**autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, **autocast):
            return type(experts(x, counts).grad_fn).__name__

    with cpu_gemm.use_backend("onednn"):
        assert last_op(enabled=False) == "ExpertLinearBackward"
        assert last_op() != "ExpertLinearBackward"                            # bf16 autocast: grouped_mm
    with cpu_gemm.use_backend("blas"):
        assert last_op(enabled=False) != "ExpertLinearBackward"


def test_the_expert_loop_only_where_its_gemms_are_large():
    """The measured crossover (expert_gemm's docstring): a d512 training step (4 x 128 tokens, top-8 of 64
    experts) takes the loop; decoding 4 tokens, or d128's 16 narrow experts, stay on grouped_mm."""
    w512, w128 = torch.empty(64, 256, 512), torch.empty(16, 64, 128)
    assert expert_gemm.pays(torch.empty(4 * 128 * 8, 512), w512)
    assert not expert_gemm.pays(torch.empty(4 * 8, 512), w512)
    assert not expert_gemm.pays(torch.empty(4 * 128 * 4, 128), w128)


def _loss_and_grads(model, ids, backend):
    model.zero_grad(set_to_none=True)
    with cpu_gemm.use_backend(backend):
        out = model(ids)
        out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_step_on_onednn_equals_torch_matmul(dtype, monkeypatch):
    """A whole OLMoE + OE + MTP training step: fp32 loss and every gradient equal across the two backends to fp32
    rounding. bf16 never takes the oneDNN path, so its results are bitwise the same on both."""
    monkeypatch.setattr(expert_gemm, "MIN_MACS_PER_EXPERT", 1)              # the experts' loop runs too
    cfg = load_model_config("configs/model/tiny-olmoe-ot.yaml", ["vocab_size=512", "padded_vocab_size=512"])
    model = build_model(cfg, seed=0).to(dtype)
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    loss_b, grads_b = _loss_and_grads(model, ids, "blas")
    loss_o, grads_o = _loss_and_grads(model, ids, "onednn")
    assert grads_b.keys() == grads_o.keys() and len(grads_b) == len(list(model.parameters()))
    if dtype == torch.bfloat16:
        assert torch.equal(loss_o, loss_b) and all(torch.equal(grads_o[n], grads_b[n]) for n in grads_b)
        return
    torch.testing.assert_close(loss_o, loss_b, rtol=1e-6, atol=0)
    for name, want in grads_b.items():
        assert (grads_o[name] - want).norm() <= 1e-5 * want.norm() + 1e-12, name
    assert not all(torch.equal(grads_o[n], grads_b[n]) for n in grads_b)     # the other kernels did run


@needs_onednn
def test_head_logits_on_onednn_where_nothing_records():
    """Generation and evaluation take the head's logits under no_grad: oneDNN, equal to F.linear to fp32
    rounding, any leading shape; with autograd recording they are F.linear itself."""
    from pipeline.model.linear_cross_entropy import OutputHead
    torch.manual_seed(0)
    head, x = OutputHead(64, 300, bias=False), torch.randn(2, 5, 64)
    with torch.no_grad():
        got, want = head(x), F.linear(x, head.weight)
    assert got.shape == (2, 5, 300)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    recorded = head(x)
    assert recorded.grad_fn is not None and torch.equal(recorded.detach(), want)
