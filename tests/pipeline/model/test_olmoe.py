import pytest
import torch

from pipeline.config.model import load_model_config
from pipeline.model import OLMoE, build_model
from pipeline.model.attention import document_attention_mask


def tiny(name="tiny-olmoe-ot", *overrides):
    cfg = load_model_config(f"configs/model/{name}.yaml", ["vocab_size=64", "padded_vocab_size=64", *overrides])
    torch.manual_seed(0)
    return build_model(cfg)


def test_tiny_ot_overfits_one_batch():
    model = tiny("tiny-olmoe-ot")
    torch.manual_seed(1)
    ids = torch.randint(0, 64, (2, 32))
    starts = torch.zeros(2, 32, dtype=torch.bool)
    starts[:, 0] = starts[1, 20] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(200):
        out = model(ids, doc_starts=starts)
        if out.losses["loss"] < 0.1:
            break
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert out.losses["loss"] < 0.1, (step, out.losses)
    assert set(out.losses) == {"lm", "mtp_1", "lb", "z", "loss"}
    assert out.stats["expert_counts"].shape == (model.num_moe_layers, 8) == (3, 8)
    assert out.stats["expert_counts"].sum(1).tolist() == [2 * 32 * 2] * 3
    assert out.stats["oe_ids"].shape == (4, 2, 32)


def test_packed_documents_match_separate_documents():
    """Doc masking + OE reset: a document's outputs do not depend on what was packed before it."""
    model = tiny("tiny-olmoe-oe").eval()
    a, b = torch.randint(0, 64, (1, 7)), torch.randint(0, 64, (1, 9))
    packed = torch.cat([a, b], dim=1)
    starts = torch.zeros(1, 16, dtype=torch.bool)
    starts[0, 0] = starts[0, 7] = True
    with torch.no_grad():
        joint = model.logits(packed, starts)
        alone = model.logits(b, torch.zeros(1, 9, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True))
        leaky = model.logits(packed)                      # no doc_starts: plain causal, context leaks
    torch.testing.assert_close(joint[:, 7:], alone, rtol=1e-4, atol=1e-5)
    assert (leaky[:, 7:] - alone).abs().max() > 1e-3


def test_single_document_rows_take_the_causal_fast_path():
    starts = torch.zeros(2, 5, dtype=torch.bool)
    starts[:, 0] = True
    assert document_attention_mask(starts) is None
    starts[1, 3] = True
    mask = document_attention_mask(starts)
    assert mask.shape == (2, 1, 5, 5)
    assert mask[1, 0, 4].tolist() == [False, False, False, True, True]
    assert mask[0, 0].equal(torch.ones(5, 5, dtype=torch.bool).tril())
    model = tiny("tiny-olmoe").eval()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, doc_starts=starts.index_fill(1, torch.tensor([3]), False)).loss,
                                   model(ids).loss)


def test_dense_baseline_has_zero_router_losses():
    model = tiny("tiny-dense")
    out = model(torch.randint(0, 64, (2, 8)))
    assert out.losses["lb"] == 0 and out.losses["z"] == 0 and "expert_counts" not in out.stats
    out.loss.backward()


def test_parameter_names_make_groups_derivable():
    model = tiny("tiny-olmoe-ot", "over_encoding.output_norm=true")
    names = dict(model.named_parameters())
    assert "embed.weight" in names and "lm_head.weight" in names
    assert getattr(names["over_encoding.table"], "_oe_table", False)
    one_dim = {n for n, p in names.items() if p.ndim == 1}
    assert one_dim and all("norm" in n and n.endswith("weight") for n in one_dim)
    assert all(p.ndim == 3 for n, p in names.items() if getattr(p, "_moe_expert", False))
    assert not any(n.endswith("bias") for n in names)


def test_init_is_truncated_normal():
    model = tiny("tiny-olmoe")
    w = model.layers[0].mlp.experts.w_up
    assert w.abs().max() <= 0.06 + 1e-7 and abs(w.std().item() - 0.02 * 0.9866) < 0.001   # 3σ-truncated std = 0.9866σ
    assert model.norm.weight.eq(1).all()


@pytest.mark.parametrize("name", ["olmoe-1.3b", "olmoe-1.3b-oe12.8m", "olmoe-1.3b-ot12.8m", "olmoe-7b-oe12.8m"])
def test_large_configs_build_on_meta(name):
    model = build_model(load_model_config(f"configs/model/{name}.yaml"), device="meta")
    assert isinstance(model, OLMoE)
    assert all(p.device.type == "meta" for p in model.parameters())
