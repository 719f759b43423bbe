"""Issue 19's recipe options (an audit against OLMoE and DeepSeek-V3): optim.decay_norm_and_bias /
embedding_weight_decay param groups, over_decoding.output_norm per_module (DeepSeek-V3's per-MTP-module
norm: own parameters, gradients, export), model.mtp_aux_loss (which routers the lb / z means cover, checked
against a hand computation in fp32 and bf16), and the literal-paper model config."""
from __future__ import annotations

import pytest
import torch

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.config.run import OptimConfig
from pipeline.export.hf_layout import REMOTE, from_hf, to_hf
from pipeline.model import build_model
from pipeline.train.param_groups import build_param_groups
from pipeline.train.resume_rules import config_changes
from tests.helpers.multirank import REPO

MODEL = REPO / "configs" / "model"
pytestmark = pytest.mark.filterwarnings("ignore:over_encoding.m")


def _model(config: str = "tiny-olmoe-ot.yaml", *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_model_config(MODEL / config, list(overrides)))


def _members(model, optim: OptimConfig) -> dict[str, tuple[set[str], float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: ({names[id(p)] for p in g["params"]}, g["weight_decay"])
            for g in build_param_groups(model, optim)}


def test_decay_norm_and_bias_moves_every_1d_parameter_into_the_decay_group():
    model = _model()
    norms = {n for n, p in model.named_parameters() if p.ndim < 2}
    assert "norm.weight" in norms and "over_encoding.table" not in norms
    default = _members(model, OptimConfig(weight_decay=0.1))
    assert default["no_decay"] == (norms, 0.0) and not norms & default["decay"][0]
    decayed = _members(model, OptimConfig(weight_decay=0.1, decay_norm_and_bias=True,
                                          embedding_weight_decay=True))
    assert "no_decay" not in decayed and norms <= decayed["decay"][0] and decayed["decay"][1] == 0.1
    assert decayed["embedding"] == ({"embed.weight"}, 0.1)
    # the OE tables are not embeddings for these switches: their own group and oe_weight_decay
    assert decayed["oe_tables"] == ({"over_encoding.table"}, 0.0)
    assert sum(len(m) for m, _ in decayed.values()) == len(list(model.parameters()))


def _per_module(*overrides):
    return _model("tiny-olmoe-ot.yaml", "over_decoding.depth=2", "over_decoding.output_norm=per_module", *overrides)


def test_per_module_mtp_norm_has_its_own_parameters_and_gradients():
    shared, own = _model("tiny-olmoe-ot.yaml", "over_decoding.depth=2"), _per_module()
    extra = set(own.state_dict()) - set(shared.state_dict())
    assert extra == {"mtp.0.output_norm.weight", "mtp.1.output_norm.weight"}
    assert own.mtp_norm(1) is own.mtp[0].output_norm and shared.mtp_norm(2) is shared.norm
    ids = torch.randint(0, own.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    # same seed, same init: the norms start at 1, so the loss equals the shared model's until they move
    own.load_state_dict({**shared.state_dict(), **{k: own.state_dict()[k] for k in extra}})
    torch.testing.assert_close(own(ids).loss, shared(ids).loss)
    own(ids).loss.backward()
    for d in (0, 1):
        assert own.mtp[d].output_norm.weight.grad.abs().sum() > 0
    with torch.no_grad():
        own.mtp[0].output_norm.weight.mul_(3.0)
    out, ref = own(ids), shared(ids)
    assert not torch.allclose(out.losses["mtp_1"], ref.losses["mtp_1"])
    torch.testing.assert_close(out.losses["lm"], ref.losses["lm"])   # the trunk's norm is untouched


def test_per_module_norm_round_trips_the_remote_layout():
    model = _per_module()
    state = model.state_dict()
    hf = to_hf(state, model.cfg, REMOTE)
    assert "mtp.1.output_norm.weight" in hf
    back = from_hf(hf, model.cfg, REMOTE, "test")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_per_module_norm_remote_code_matches_our_mtp_logits(tmp_path):
    pytest.importorskip("transformers")
    from pipeline.export.hf_export import save_hf
    from pipeline.model.over_decoding import shift_left
    from tests.pipeline.export.hf_helpers import load_hf
    model = _per_module("init_std=0.2").eval()
    with torch.no_grad():
        for d in (0, 1):
            model.mtp[d].output_norm.weight.uniform_(0.5, 2.0)
    out = save_hf(tmp_path / "m", model.state_dict(), model.cfg, {"step": 0},
                  special_ids={"eos_token_id": 2, "pad_token_id": 3, "bos_token_id": 2})
    ids = torch.randint(0, model.cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = load_hf(out).over_decoding_logits(ids)
        h, emb, _, _, rope, mask = model.forward_hidden(ids)
        for d, module in enumerate(model.mtp, start=1):
            h, _ = module(h, shift_left(emb, d), rope, mask)
            vocab = model.cfg.vocab_size
            torch.testing.assert_close(theirs[d - 1][..., :vocab], model.lm_head(model.mtp_norm(d)(h))[..., :vocab],
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["pooled", "trunk_only", "separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mtp_aux_loss_means_cover_the_stated_routers(mode, dtype):
    model = _model("tiny-olmoe-ot.yaml", "over_decoding.depth=2", f"mtp_aux_loss={mode}").to(dtype)
    cfg, n_layers = model.cfg, model.cfg.n_layers
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    routers = []   # every MoE's RouterStats in call order: trunk layers, then MTP depths 1, 2
    hooks = [m.register_forward_hook(lambda _m, _a, out: routers.append(out[1]))
             for m in model.modules() if type(m).__name__ == "MoE"]
    out = model(ids)
    for h in hooks:
        h.remove()
    assert len(routers) == n_layers + 2
    lb = [float(r.lb.detach()) for r in routers]
    z = [float(r.z.detach()) for r in routers]
    mean = lambda xs: sum(xs) / len(xs)   # noqa: E731
    trunk = slice(0, n_layers) if mode != "pooled" else slice(None)
    expect = {"lb": mean(lb[trunk]), "z": mean(z[trunk])}
    if mode == "separate":
        expect |= {"lb_mtp": mean(lb[n_layers:]), "z_mtp": mean(z[n_layers:])}
    assert {k for k in out.losses if k.startswith(("lb", "z"))} == set(expect)
    # bf16: each stat is one bf16 rounding (rel 2^-8) and the stacked mean rounds once more in bf16
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for key, value in expect.items():
        assert float(out.losses[key]) == pytest.approx(value, rel=tol), key
    aux = sum((cfg.lb_coef if k.startswith("lb") else cfg.z_coef) * v for k, v in expect.items())
    heads = float(out.losses["lm"]) + sum(w * float(out.losses[f"mtp_{d}"])
                                          for d, w in enumerate(cfg.over_decoding.term_weights(), start=1))
    assert float(out.losses["loss"]) == pytest.approx(heads + aux, rel=tol)


@pytest.mark.parametrize("overrides,match", [
    (["mtp_aux_loss=trunk_only"], r"^mtp_aux_loss: trunk_only needs mlp moe and over_decoding.mode mtp"),
    (["mtp_aux_loss=both"], r"mtp_aux_loss"),
    (["over_decoding.mode=product", "over_decoding.output_norm=per_module"], r"^over_decoding.output_norm: "),
    (["over_decoding.output_norm=own"], r"over_decoding.output_norm"),
])
def test_bad_values_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_model_config(MODEL / "tiny-olmoe.yaml", overrides)
    assert "\n" not in str(err.value)


def test_decay_norm_and_bias_must_be_a_bool():
    from pipeline.config.base import load_config
    with pytest.raises(ConfigError, match="decay_norm_and_bias") as err:
        load_config(OptimConfig, data={"decay_norm_and_bias": "yes"})
    assert "\n" not in str(err.value)


def test_literal_paper_config_switches_off_both_document_guards():
    literal = load_model_config(MODEL / "olmoe-1.3b-ot12.8m-literal.yaml")
    ours = load_model_config(MODEL / "olmoe-1.3b-ot12.8m.yaml")
    assert (literal.doc_mask, literal.over_encoding.reset_at_doc) == (False, False)
    assert (ours.doc_mask, ours.over_encoding.reset_at_doc) == (True, True)
    literal.doc_mask, literal.over_encoding.reset_at_doc, literal.name = True, True, ours.name
    assert literal == ours   # nothing else differs


def test_checkpoints_saved_before_the_new_keys_resume_with_their_defaults():
    saved = {"model": {"lb_coef": 0.01, "over_decoding": {"mode": "mtp"}}, "optim": {"lr": 1e-3}}
    current = {"model": {"lb_coef": 0.01, "mtp_aux_loss": "pooled",
                         "over_decoding": {"mode": "mtp", "output_norm": "shared"}},
               "optim": {"lr": 1e-3, "decay_norm_and_bias": False}}
    assert config_changes(saved, current) == ([], [])
    current["model"]["over_decoding"]["output_norm"] = "per_module"
    assert config_changes(saved, current)[0] == ["model.over_decoding.output_norm 'shared' -> 'per_module'"]
