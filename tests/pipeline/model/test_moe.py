import math

import torch
import torch.nn.functional as F

from pipeline.model.moe import MoE


def test_lb_and_z_equal_hand_computation():
    moe = MoE(d_model=2, n_experts=2, top_k=1, hidden=3)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(2))                     # logits = x
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    _, stats = moe(x)
    logits = [[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    probs = [[math.exp(r[0]) / sum(map(math.exp, r)), math.exp(r[1]) / sum(map(math.exp, r))] for r in logits]
    # top-1 experts: 0, 1, 0 -> f = [2/3, 1/3]; P_e = mean prob
    f = [2 / 3, 1 / 3]
    p_mean = [sum(p[e] for p in probs) / 3 for e in range(2)]
    lb = 2 * sum(fe * pe for fe, pe in zip(f, p_mean))
    z = sum(math.log(sum(map(math.exp, r))) ** 2 for r in logits) / 3
    assert stats.counts.tolist() == [2, 1]
    assert abs(stats.lb.item() - lb) < 1e-6
    assert abs(stats.z.item() - z) < 1e-6


def test_dispatch_matches_per_token_reference():
    torch.manual_seed(0)
    moe = MoE(d_model=8, n_experts=6, top_k=3, hidden=5)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 8)
    out, stats = moe(x)
    flat = x.reshape(-1, 8)
    probs = (flat @ moe.router.weight.t()).softmax(-1)
    ex = moe.experts
    ref = []
    for t in range(flat.shape[0]):
        gates, experts = probs[t].topk(3)
        y = torch.zeros(8)
        for g, e in zip(gates, experts):                          # gates are NOT renormalised
            h = F.silu(ex.w_gate[e] @ flat[t]) * (ex.w_up[e] @ flat[t])
            y = y + g * (ex.w_down[e] @ h)
        ref.append(y)
    torch.testing.assert_close(out.reshape(-1, 8), torch.stack(ref), rtol=1e-5, atol=1e-6)
    assert int(stats.counts.sum()) == 14 * 3


def test_unused_experts_still_receive_zero_gradient():
    moe = MoE(d_model=4, n_experts=4, top_k=1, hidden=3)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0                            # everything goes to expert 0
    x = torch.ones(5, 4)
    out, stats = moe(x)
    out.sum().backward()
    assert stats.counts.tolist() == [5, 0, 0, 0]
    g = moe.experts.w_gate.grad
    assert g is not None and g[0].abs().sum() > 0 and g[1:].abs().sum() == 0
