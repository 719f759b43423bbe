"""HF export, native layout: transformers' own OlmoeForCausalLM loading our export gives our logits (OLMoE
conventions match); the remote-code layout for the other models is tested in test_hf_export.py."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.export.hf_olmoe import ExportError, save_hf_olmoe
from tests.pipeline.export.hf_helpers import perturbed_model as _model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("config, overrides", [
    ("tiny-olmoe.yaml", ["padded_vocab_size=576"]),
    ("tiny-olmoe.yaml", ["over_decoding.mode=mtp"]),          # MTP module is dropped, logits unchanged
    ("tiny-dense.yaml", []),                                   # dense = 1-expert top-1 OLMoE
])
def test_transformers_olmoe_reproduces_our_logits(tmp_path, config, overrides):
    model = _model(config, *overrides)
    out = save_hf_olmoe(tmp_path / "hf", model.state_dict(), model.cfg, {"step": 0}, eos_id=511, pad_id=1)
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["norm_topk_prob"] is False and config_json["vocab_size"] == model.cfg.padded_vocab_size
    hf = transformers.OlmoeForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.logits(ids), hf(ids).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=5e-5, rtol=1e-4)
    assert ours.abs().max() > 1.0    # not a vacuous comparison of near-zero logits


def test_over_encoding_model_is_refused(tmp_path):
    model = _model("tiny-olmoe-oe.yaml")
    with pytest.raises(ExportError, match="over_encoding.enabled"):
        save_hf_olmoe(tmp_path / "hf", model.state_dict(), model.cfg, {})
    assert not (tmp_path / "hf").exists()
