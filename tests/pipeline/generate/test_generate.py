"""Generation: the KV-cache + n-gram-cache path must give exactly the tokens of full recomputation."""
from __future__ import annotations

import pytest
import torch

from pipeline.config.model import load_model_config
from pipeline.generate.generator import generate
from pipeline.generate.sampling import SamplingConfig, filter_logits, sample_next
from pipeline.model import build_model
from tests.helpers.multirank import REPO


def tiny_model(config: str = "tiny-olmoe-ot.yaml", *overrides: str):
    torch.manual_seed(0)
    # a larger init makes the logits far from uniform, so greedy paths differ visibly between contexts
    cfg = load_model_config(REPO / "configs" / "model" / config,
                            ["vocab_size=500", "init_std=0.2", "over_encoding.init_std=0.5", *overrides])
    return build_model(cfg).eval()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [300], [7, 7, 7, 7]]


def test_cached_greedy_equals_full_recomputation_oe_mtp():
    model = tiny_model()
    assert model.over_encoding is not None and model.mtp is not None
    cached = generate(model, PROMPTS, max_new_tokens=24)
    full = generate(model, PROMPTS, max_new_tokens=24, use_cache=False)
    assert cached.tokens == full.tokens
    assert all(len(t) == 24 for t in cached.tokens)
    assert len({tuple(t) for t in cached.tokens}) == len(PROMPTS)   # a real test: rows differ


def test_cached_logits_match_full_logits_with_left_padding():
    model = tiny_model()
    seq = torch.randint(1, 500, (1, 12))
    with torch.no_grad():
        ref = model.logits(seq)
        ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq[:, :6]], dim=1)   # 3 pads, 6 tokens
        valid = ids != 0
        valid[:, 3:] = True
        cache = model.new_decode_cache(1, 32)
        chunks = [model.decode(ids, cache, valid)[:, 3:]]
        chunks += [model.decode(seq[:, i:i + 1], cache) for i in range(6, 12)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_last_only_equals_the_last_position_of_all_logits(dtype):
    """decode(last_only=True), what generation's prefill calls, is the last row of the full prefill: the head of
    one position equals that position's row of the head over all positions (same GEMM row; bf16 autocast too),
    and the cache it leaves decodes the next token identically."""
    model = tiny_model()
    ids = torch.cat([torch.zeros(2, 2, dtype=torch.long), torch.randint(1, 500, (2, 5))], dim=1)
    valid = ids != 0
    outs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
        for last_only in (False, True):
            cache = model.new_decode_cache(2, 12)
            first = model.decode(ids, cache, valid, last_only=last_only)
            outs.append((first[:, -1].float(), model.decode(torch.tensor([[3], [4]]), cache).float()))
    (full, nxt_full), (last, nxt_last) = outs
    assert last.shape == (2, model.cfg.padded_vocab_size)
    # fp32: the same GEMM row up to summation order (measured 1.4e-6 at |logit| < 6); bf16: logits in [4, 8) are
    # spaced 2^-5 = 0.031 apart, so another blocking order may move one by up to two spacings (0.0625)
    tol = 1e-5 if dtype == torch.float32 else 0.07
    torch.testing.assert_close(last, full, rtol=0, atol=tol)
    torch.testing.assert_close(nxt_last, nxt_full, rtol=0, atol=0)


def test_one_oe_lookup_per_table_per_decoded_token():
    model = tiny_model()
    oe = model.over_encoding
    calls = []
    original = oe.lookup
    oe.lookup = lambda rows: (calls.append(tuple(rows.shape)), original(rows))[1]   # instance attribute
    generate(model, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], max_new_tokens=5)
    tables = oe.num_tables
    assert calls[0] == (2, 5, tables)                      # prefill: every prompt position once
    assert calls[1:] == [(2, 1, tables)] * 4               # then one row per table per row and token


def test_dense_model_and_eos_stop():
    model = tiny_model("tiny-dense.yaml")
    first = generate(model, [[3, 4, 5]], max_new_tokens=6).tokens[0]
    stopped = generate(model, [[3, 4, 5]], max_new_tokens=6, eos_id=first[2])
    assert stopped.tokens[0] == first[:2] and stopped.finished == [True]
    assert generate(model, [[3, 4, 5]], 6, use_cache=False).tokens[0] == first


def test_sampling_filters_hand_checked():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)[0, 2:]).all()
    probs = logits.softmax(-1)[0]          # 0.644, 0.237, 0.087, 0.032
    kept = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.85))[0].tolist()
    assert kept == [True, True, False, False] and probs[:2].sum() >= 0.85 > probs[0]
    assert torch.isfinite(filter_logits(logits, 0, 0.5))[0].tolist() == [True, False, False, False]
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, SamplingConfig(1.0, 2, 1.0), gen)) for _ in range(200)}
    assert draws == {0, 1}


def test_sampling_is_seeded_and_stays_in_vocab():
    model = tiny_model("tiny-olmoe-ot.yaml", "padded_vocab_size=512")
    with torch.no_grad():
        model.lm_head.weight[500:] = 0
        model.lm_head.weight[500:, 0] = 100.0      # padding rows would win every argmax if not masked
    cfg = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
    a = generate(model, PROMPTS, 10, cfg, seed=3).tokens
    assert a == generate(model, PROMPTS, 10, cfg, seed=3).tokens
    assert all(0 <= t < 500 for row in a for t in row)
    assert all(t < 500 for t in generate(model, PROMPTS, 5).tokens[0])
    assert generate(model, PROMPTS, 10, SamplingConfig(1.0, top_k=1)).tokens == generate(model, PROMPTS, 10).tokens


@pytest.mark.parametrize("prompts, message", [([[]], "empty"), ([[1, 600]], "outside the vocabulary")])
def test_bad_prompts(prompts, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(), prompts, 3)
