"""The head's chunked loss (pipeline/model/linear_cross_entropy.py) equals Linear -> F.cross_entropy: loss and
both gradients, with ignored targets, several vocabulary chunks, no valid target at all, and without grad;
bf16 / autocast keep the plain path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import linear_cross_entropy as lce
from pipeline.model.linear_cross_entropy import IGNORE, OutputHead, cross_entropy, linear_cross_entropy


def _case(rows=37, d=24, vocab=1000, dtype=torch.float64, ignored=(0, 5, 36)):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, d, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(vocab, d, dtype=dtype, generator=g) * 0.5).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g)
    t[list(ignored)] = IGNORE
    t[1], t[2] = 0, vocab - 1                         # targets in the first and the last chunk
    return h, w, t


def _loss_and_grads(fn, h, w, t):
    h.grad = w.grad = None
    loss = fn(h, w, t)
    loss.backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("chunk_elements", [1 << 20, 37 * 256])      # one chunk; four chunks of 256 columns
def test_equals_the_plain_path_in_fp64(monkeypatch, chunk_elements):
    monkeypatch.setattr(lce, "CHUNK_ELEMENTS", chunk_elements)
    h, w, t = _case()
    plain = _loss_and_grads(lambda h, w, t: cross_entropy(F.linear(h, w), t), h, w, t)
    fused = _loss_and_grads(linear_cross_entropy, h, w, t)
    for a, b in zip(plain, fused):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert plain[0] > 1.0 and plain[2].abs().max() > 1e-3      # not a vacuous comparison


def test_fp32_close_and_no_grad_path_equal():
    h, w, t = _case(dtype=torch.float32, rows=64, vocab=3000)
    plain = _loss_and_grads(lambda h, w, t: cross_entropy(F.linear(h, w), t), h, w, t)
    fused = _loss_and_grads(linear_cross_entropy, h, w, t)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=0)
    for a, b in zip(plain[1:], fused[1:]):        # sums in another order: relative to the gradient's norm
        assert (b - a).norm() <= 1e-6 * a.norm()
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), fused[0], rtol=0, atol=0)


def test_no_valid_target_gives_zero_loss_and_zero_gradients():
    h, w, t = _case()
    t[:] = IGNORE
    loss, gh, gw = _loss_and_grads(linear_cross_entropy, h, w, t)
    assert loss == 0 and not gh.any() and not gw.any()


def test_gradient_is_scaled_by_the_outer_weight_and_backward_runs_once():
    h, w, t = _case()
    _, gh, gw = _loss_and_grads(linear_cross_entropy, h, w, t)
    h.grad = w.grad = None
    loss = 0.1 * linear_cross_entropy(h, w, t)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(h.grad, 0.1 * gh, rtol=1e-12, atol=0)
    torch.testing.assert_close(w.grad, 0.1 * gw, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bf16_and_autocast_keep_the_plain_path():
    h, w, t = _case(dtype=torch.bfloat16)
    assert not lce.fused_applies(h, w)
    torch.testing.assert_close(linear_cross_entropy(h, w, t), cross_entropy(F.linear(h, w), t), rtol=0, atol=0)
    h32, w32, _ = _case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lce.fused_applies(h32, w32)


def test_output_head_is_a_linear_with_the_same_parameter_name():
    head = OutputHead(8, 40, bias=False)
    assert isinstance(head, torch.nn.Linear) and list(head.state_dict()) == ["weight"]
    x = torch.randn(3, 5, 8)
    t = torch.randint(0, 40, (3, 5))
    torch.testing.assert_close(head(x), F.linear(x, head.weight))
    torch.testing.assert_close(head.loss(x, t), cross_entropy(F.linear(x, head.weight), t), rtol=1e-6, atol=0)
