import torch

from pipeline.config.model import load_model_config
from pipeline.model import build_model, labels_from_inputs
from pipeline.model.olmoe import cross_entropy
from pipeline.model.over_decoding import shift_labels, shift_left

X = -100


def test_labels_from_inputs_mask_document_starts():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    starts = torch.tensor([[True, False, False, True, False, False]])
    assert labels_from_inputs(ids).tolist() == [[11, 12, 13, 14, 15, X]]
    assert labels_from_inputs(ids, starts).tolist() == [[11, 12, X, 14, 15, X]]


def test_shift_labels_never_crosses_a_boundary():
    # tokens 10..17, documents [10 11 12] [13 14 15 16 17]  -> labels per CONTRACTS.md
    labels = torch.tensor([[11, 12, X, 14, 15, 16, 17, X]])
    assert shift_labels(labels, 0).tolist() == labels.tolist()
    assert shift_labels(labels, 1).tolist() == [[12, X, X, 15, 16, 17, X, X]]
    assert shift_labels(labels, 2).tolist() == [[X, X, X, 16, 17, X, X, X]]
    assert shift_labels(labels, 9).tolist() == [[X] * 8]


def test_shift_left_pads_with_zeros():
    x = torch.arange(1, 6, dtype=torch.float).view(1, 5, 1)
    assert shift_left(x, 2).flatten().tolist() == [3, 4, 5, 0, 0]


def _tiny(**over):
    cfg = load_model_config("configs/model/tiny-olmoe-ot.yaml",
                            ["vocab_size=64", "padded_vocab_size=64", "n_layers=1"] + [f"{k}={v}" for k, v in over.items()])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_mtp_depth_d_reads_x_i_plus_d_through_the_oe_embedding_and_targets_labels_i_plus_d():
    model = _tiny(**{"over_decoding.depth": 2, "doc_mask": "false"})
    ids = torch.randint(0, 64, (1, 12))
    labels = labels_from_inputs(ids)
    out = model(ids)
    h, emb, _, _, rope, mask = model.forward_hidden(ids)
    h_d, expected = h, {}
    for d, module in enumerate(model.mtp, start=1):
        h_d, _ = module(h_d, shift_left(emb, d), rope, mask)
        logits = model.lm_head(model.norm(h_d))
        expected[d] = cross_entropy(logits, shift_labels(labels, d))
        # causal: depth-d state at i depends on tokens <= i+d only
        ids2 = ids.clone()
        ids2[0, 8] = (ids2[0, 8] + 1) % 64
        h2, emb2, _, _, _, _ = model.forward_hidden(ids2)
        h2_d = h2
        for module2 in list(model.mtp)[:d]:
            h2_d, _ = module2(h2_d, shift_left(emb2, list(model.mtp).index(module2) + 1), rope, mask)
        changed = (h2_d - h_d).abs().amax(-1)[0] > 1e-6
        assert not changed[: 8 - d].any() and changed[8 - d]
    for d in (1, 2):
        torch.testing.assert_close(out.losses[f"mtp_{d}"], expected[d].detach())
    lam = model.cfg.over_decoding.weight
    total = (out.losses["lm"] + lam * (out.losses["mtp_1"] + out.losses["mtp_2"]) / 2
             + 0.01 * out.losses["lb"] + 0.001 * out.losses["z"])
    torch.testing.assert_close(out.losses["loss"], total)


def test_product_heads_predict_x_i_plus_j_with_weights():
    model = _tiny(**{"over_decoding.mode": "product", "over_decoding.n": 3, "over_decoding.head_dim": 8,
                     "over_decoding.weights": "[0.5, 0.25]"})
    ids = torch.randint(0, 64, (2, 10))
    starts = torch.zeros(2, 10, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, 4] = True
    out = model(ids, doc_starts=starts)
    labels = labels_from_inputs(ids, starts)
    hn = model.norm(model.forward_hidden(ids, starts)[0])
    for j, head in zip((2, 3), model.od_heads):
        ref = cross_entropy(head(hn), shift_labels(labels, j - 1))
        torch.testing.assert_close(out.losses[f"od_{j}"], ref.detach())
    total = (out.losses["lm"] + 0.5 * out.losses["od_2"] + 0.25 * out.losses["od_3"]
             + 0.01 * out.losses["lb"] + 0.001 * out.losses["z"])
    torch.testing.assert_close(out.losses["loss"], total)
    assert set(out.losses) == {"lm", "od_2", "od_3", "lb", "z", "loss"}
