"""HF export with the shipped remote code (OE, OT, product heads, ablation switches): transformers'
AutoModelForCausalLM reproduces our logits and Over-Decoding heads to fp32 precision, padding and the
n-gram context of incremental decoding behave as in our model, and our own loader reads the folder back
bit for bit."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.export.hf_export import save_hf
from pipeline.export.load import load_model
from pipeline.model.over_decoding import shift_left
from tests.pipeline.export.hf_helpers import load_hf, perturbed_model, transformers

# tiny vocabularies share factors with every small modulus: the OE warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:over_encoding.m")
SPECIAL = {"eos_token_id": 2, "pad_token_id": 3, "bos_token_id": 2}

MODELS = {
    "oe": ("tiny-olmoe-oe.yaml", []),
    "ot": ("tiny-olmoe-ot.yaml", ["over_decoding.depth=2"]),
    "product": ("tiny-olmoe.yaml", ["over_decoding.mode=product", "over_decoding.n=3", "over_decoding.head_dim=16"]),
    "oe-product": ("tiny-olmoe-oe.yaml", ["over_decoding.mode=product", "padded_vocab_size=640"]),
    "oe-ablations": ("tiny-olmoe-oe.yaml", ["qk_norm=false", "over_encoding.orders=[3]", "over_encoding.output_norm=true",
                                            "over_encoding.output_scale=2.0", "over_encoding.n=4"]),
    "dense-oe-no-unigram": ("tiny-dense.yaml", ["over_encoding.enabled=true", "over_encoding.m=4099",
                                                "over_encoding.unigram=false"]),
}


def _export(tmp_path, name: str, **kwargs):
    config, overrides = MODELS[name]
    model = perturbed_model(config, *overrides)
    out = save_hf(tmp_path / name, model.state_dict(), model.cfg, {"step": 0}, special_ids=SPECIAL, **kwargs)
    return model, out


def _ids(model, shape=(2, 33), seed=1):
    return torch.randint(0, model.cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_remote_code_reproduces_our_logits(tmp_path, name):
    model, out = _export(tmp_path, name)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "over_tokenized_olmoe" and "AutoModelForCausalLM" in config["auto_map"]
    assert {"configuration_over_tokenized_olmoe.py", "modeling_over_tokenized_olmoe.py"} <= {p.name for p in out.iterdir()}
    hf = load_hf(out)
    assert type(hf).__name__ == "OverTokenizedOlmoeForCausalLM"
    ids, vocab = _ids(model), model.cfg.vocab_size
    with torch.no_grad():
        ours, theirs = model.logits(ids), hf(ids).logits
    diff = (theirs[..., :vocab] - ours[..., :vocab]).abs().max().item()
    print(f"{name}: max |logit difference| {diff:.2e} (logits up to {ours.abs().max():.2f})")
    torch.testing.assert_close(theirs[..., :vocab], ours[..., :vocab], atol=1e-4, rtol=1e-4)
    assert ours.abs().max() > 1.0
    # embedding padding rows (no token maps to them) are masked, as our scoring and sampling leave them out
    assert theirs.shape == ours.shape and bool((theirs[..., vocab:] == torch.finfo(theirs.dtype).min).all())


def _our_od_logits(model, ids):
    """Our model's Over-Decoding logits, computed from its modules as OLMoE.forward does for the losses."""
    with torch.no_grad():
        h, emb, _, _, rope, mask = model.forward_hidden(ids)
        if model.od_heads is not None:
            return [head(model.norm(h)) for head in model.od_heads]
        logits = []
        for d, module in enumerate(model.mtp, start=1):
            h, _ = module(h, shift_left(emb, d), rope, mask)
            logits.append(model.lm_head(model.norm(h)))
        return logits


@pytest.mark.parametrize("name", ["ot", "product", "oe-product"])
def test_over_decoding_heads_match_ours(tmp_path, name):
    model, out = _export(tmp_path, name)
    hf = load_hf(out)
    ids = _ids(model)
    with torch.no_grad():
        theirs = hf.over_decoding_logits(ids)
    ours = _our_od_logits(model, ids)
    assert len(theirs) == len(ours) == model.cfg.over_decoding.num_terms
    vocab = model.cfg.vocab_size
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a[..., :vocab], b[..., :vocab], atol=1e-4, rtol=1e-4)
    # not a copy of the main head
    assert not torch.allclose(theirs[0][..., :vocab], model.logits(ids)[..., :vocab], atol=1e-2)


def test_drop_od_heads(tmp_path):
    model, out = _export(tmp_path, "ot", drop_od_heads=True)
    config = json.loads((out / "config.json").read_text())
    assert config["mtp_depth"] == 0 and config["pipeline_model_config"]["over_decoding"]["mode"] == "none"
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("mtp.")]
    assert "dropped from this export" in (out / "README.md").read_text()
    ids = _ids(model)
    torch.testing.assert_close(load_hf(out)(ids).logits, model.logits(ids), atol=1e-4, rtol=1e-4)
    # a product-head model without OE, heads dropped: transformers' own OlmoeForCausalLM, no remote code
    model, out = _export(tmp_path, "product", drop_od_heads=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "olmoe"
    assert not (out / "modeling_over_tokenized_olmoe.py").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(hf(ids).logits, model.logits(ids), atol=1e-4, rtol=1e-4)


def test_left_padding_hashes_as_before_the_start(tmp_path):
    """Padding (attention_mask 0, any pad id) must not enter a real token's n-grams: each row of a left-padded
    batch gives the logits of the row alone, as our generator's left padding with id 0 does."""
    model, out = _export(tmp_path, "ot")
    hf = load_hf(out)
    rows = [_ids(model, (1, n), seed=n)[0] for n in (9, 4, 1)]
    ids = torch.full((3, 9), SPECIAL["pad_token_id"])
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 9 - len(r):], mask[i, 9 - len(r):] = r, 1
    with torch.no_grad():
        batched = hf(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            torch.testing.assert_close(batched[i, 9 - len(r):], model.logits(r[None])[0], atol=1e-4, rtol=1e-4)


def test_incremental_decoding_needs_the_ngram_context(tmp_path):
    model, out = _export(tmp_path, "oe")
    hf = load_hf(out)
    seq = _ids(model, (1, 12))
    with torch.no_grad():
        full = hf(seq).logits
        prefix = hf(seq[:, :8], use_cache=True)
        step = hf(seq[:, 8:], past_key_values=prefix.past_key_values, ngram_context=seq[:, 6:8]).logits
        torch.testing.assert_close(step, full[:, 8:], atol=1e-4, rtol=1e-4)
        # the context matters: without it the new tokens' n-grams would hash as if the sequence started here
        with pytest.raises(ValueError, match="ngram_context"):
            hf(seq[:, 8:], past_key_values=prefix.past_key_values)


@pytest.mark.parametrize("name", ["ot", "product"])
def test_our_loader_reads_the_hf_export_back(tmp_path, name):
    model, out = _export(tmp_path, name)
    loaded, cfg, meta = load_model(out)
    assert cfg == model.cfg and meta["layout"] == "hf-over-tokenized-olmoe"
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(loaded.state_dict()[k], original[k]) for k in original)


def test_generate_with_cache_equals_our_generator(tmp_path):
    """transformers' greedy generate() (KV cache, n-gram context from prepare_inputs_for_generation, left
    padding with the pad id) gives pipeline/generate's greedy tokens, row by row."""
    from pipeline.generate.generator import generate

    model, out = _export(tmp_path, "ot")
    hf = load_hf(out)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [300], [7, 7, 7, 7]]
    ours = generate(model, prompts, max_new_tokens=24, eos_id=SPECIAL["eos_token_id"]).tokens
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), SPECIAL["pad_token_id"])
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        cached = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
        full = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, use_cache=False)
    theirs = [row[width:].tolist() for row in cached]
    theirs = [row[:row.index(SPECIAL["eos_token_id"])] if SPECIAL["eos_token_id"] in row else row for row in theirs]
    assert theirs == ours and torch.equal(cached, full)
    assert len({tuple(t) for t in ours}) == len(prompts) and sum(map(len, ours)) > 48   # rows differ, and decode
