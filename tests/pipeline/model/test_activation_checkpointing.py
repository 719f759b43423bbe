"""model.activation_checkpointing recomputes the trunk blocks in the backward: same loss, same gradients."""
from __future__ import annotations

import torch

from pipeline.config.model import load_model_config
from pipeline.model import build_model


def test_activation_checkpointing_gives_identical_loss_and_gradients():
    results = []
    for ckpt in (False, True):
        cfg = load_model_config("configs/model/tiny-olmoe-oe.yaml", [f"activation_checkpointing={ckpt}"])
        torch.manual_seed(0)
        model = build_model(cfg).double()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
        doc_starts = torch.rand(2, 16, generator=g) < 0.2
        out = model(ids, doc_starts=doc_starts)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        out.stats["expert_counts"]))
    (loss0, grads0, counts0), (loss1, grads1, counts1) = results
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=0)
    assert torch.equal(counts0, counts1)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=1e-10, atol=1e-12, msg=name)
