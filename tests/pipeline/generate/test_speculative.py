"""MTP speculative decoding: greedy tokens = plain greedy tokens; sampling keeps the plain distribution; the
drafts are what the training forward of the MTP modules computes (so the MTP caches roll back correctly)."""
from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from pipeline.config.model import load_model_config
from pipeline.generate.generator import generate
from pipeline.generate.sampling import SamplingConfig, next_token_probs
from pipeline.generate.speculative import generate_speculative, speculative_accept
from pipeline.model import build_model
from pipeline.model.over_decoding import shift_left
from tests.helpers.multirank import REPO
from tests.pipeline.generate.test_generate import PROMPTS, tiny_model

V_MARKOV = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def markov_batch(gen: torch.Generator, succ: torch.Tensor, rows: int = 8, length: int = 32) -> torch.Tensor:
    """Token ids from a sparse Markov chain: each token has 3 successors, of probability 0.6 / 0.3 / 0.1."""
    x = torch.empty(rows, length, dtype=torch.long)
    x[:, 0] = torch.randint(1, V_MARKOV, (rows,), generator=gen)
    pick = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), rows * length, replacement=True, generator=gen)
    for i in range(1, length):
        x[:, i] = succ[x[:, i - 1], pick[i * rows:(i + 1) * rows]]
    return x


def trained_model(config: str, *overrides: str, steps: int = 40):
    """A tiny model trained briefly on a Markov chain, so drafts are accepted often but not always."""
    torch.manual_seed(0)
    cfg = load_model_config(REPO / "configs" / "model" / config,
                            [f"vocab_size={V_MARKOV}", "over_decoding.weight=1.0", *overrides])
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(0)
    succ = torch.randint(1, V_MARKOV, (V_MARKOV, 3), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(markov_batch(gen, succ)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


MARKOV_PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [30], [7, 7, 7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
OT_DEPTHS = {"ot-depth1": [], "ot-depth3": ["over_decoding.depth=3"]}     # tiny OT: OE + MTP-DS


@pytest.fixture(scope="module", params=list(OT_DEPTHS))
def markov(request):
    return trained_model("tiny-olmoe-ot.yaml", *OT_DEPTHS[request.param])


def test_greedy_equals_plain_greedy_trained(markov):
    for n in (1, 2, 5, 30):
        trace: list = []
        spec = generate_speculative(markov, MARKOV_PROMPTS, n, trace=trace)
        assert spec.tokens == generate(markov, MARKOV_PROMPTS, n).tokens, n
        assert all(len(t) == n for t in spec.tokens)
    # the test means something: drafts were accepted, rejected, and all accepted (a bonus token) at times
    depth = len(markov.mtp)
    assert 0.2 < spec.acceptance_rate < 1.0, spec.acceptance_rate
    assert {0, depth} <= {s.accepted for s in trace if len(s.drafts) == depth}
    assert spec.verify_passes < n - 1             # plain decoding: a trunk pass per token after the first


def test_greedy_eos_stop_matches_plain(markov):
    plain = generate(markov, MARKOV_PROMPTS, 20)
    eos = plain.tokens[0][6]
    spec = generate_speculative(markov, MARKOV_PROMPTS, 20, eos_id=eos)
    stopped = generate(markov, MARKOV_PROMPTS, 20, eos_id=eos)
    assert spec.tokens == stopped.tokens and spec.finished[0] and len(spec.tokens[0]) <= 6


@pytest.mark.parametrize("config, overrides", [
    ("tiny-olmoe-ot.yaml", []), ("tiny-olmoe-ot.yaml", ["over_decoding.depth=3"]),
    ("tiny-olmoe.yaml", ["over_decoding.mode=mtp", "over_decoding.depth=2"])], ids=["ot", "ot-depth3", "no-oe"])
def test_greedy_equals_plain_greedy_random_init(config, overrides):
    model = tiny_model(config, *overrides)                      # drafts nearly always rejected
    prompts = PROMPTS + [list(range(1, 40))]
    spec = generate_speculative(model, prompts, 17)
    assert spec.tokens == generate(model, prompts, 17).tokens


def test_generation_stops_at_max_seq_len(markov):
    prompt = [[3] * (markov.cfg.max_seq_len - 4)]
    spec = generate_speculative(markov, prompt, 50)
    assert spec.tokens == generate(markov, prompt, 50).tokens and len(spec.tokens[0]) == 4


def test_drafts_equal_the_training_forward(markov):
    """Every draft distribution equals the MTP chain of `OLMoE.forward` run on the committed tokens followed
    by the drafts: the incremental MTP caches (kept, forgotten and recomputed positions) are exact."""
    sampling = SamplingConfig(temperature=1.0)
    trace: list = []
    generate_speculative(markov, MARKOV_PROMPTS[:2], 16, sampling, seed=1, trace=trace)
    assert len(trace) > 5
    with torch.no_grad():
        for step in trace:
            seq = torch.tensor([step.tokens + step.drafts[:-1]])
            h, emb, _, _, rope, _ = markov.forward_hidden(seq)
            pos = len(step.tokens) - 2                          # position T-1: the last one the trunk cached
            for d, module in enumerate(markov.mtp[:len(step.drafts)], start=1):
                h = module(h, shift_left(emb, d), rope, None)[0]
                logits = markov.lm_head(markov.norm(h[:, pos]))[:, :V_MARKOV]
                torch.testing.assert_close(step.draft_probs[d - 1], next_token_probs(logits, sampling)[0],
                                           atol=1e-5, rtol=1e-4)


def test_speculative_accept_emits_the_target_distribution():
    """Synthetic p, q (with zeros, as after top-k), 200k rows: each emitted token follows p."""
    gen = torch.Generator().manual_seed(0)
    n, d, v = 200_000, 3, 6
    p = torch.rand(d + 1, v, generator=gen) ** 2
    p[:, 0] = 0
    p = p / p.sum(-1, keepdim=True)
    q = 0.6 * p[:d] + 0.4 * torch.rand(d, v, generator=gen) ** 2       # a draft that is right most of the time
    q[:, 1] = 0
    q = q / q.sum(-1, keepdim=True)
    drafts = torch.multinomial(q.repeat(n, 1), 1, replacement=True, generator=gen).view(n, d)
    k, nxt = speculative_accept(p.expand(n, -1, -1), q.expand(n, -1, -1), drafts, gen)
    emitted = torch.cat([drafts, torch.zeros(n, 1, dtype=torch.long)], 1)
    emitted[torch.arange(n), k] = nxt
    for j in range(d + 1):           # token j exists when drafts 0..j-1 were accepted
        rows = k >= j
        assert rows.sum() > 1000 and chi_square_pvalue(emitted[rows, j], p[j]) > 1e-3, j
    assert 0.05 < (k == d).double().mean() < 0.95 and 0.05 < (k == 0).double().mean() < 0.95
    # greedy = one-hot p and q: accept exactly the drafts that are the target argmax
    one_hot = torch.eye(v)
    k, nxt = speculative_accept(one_hot[[2, 3, 4]][None], one_hot[[2, 5]][None], torch.tensor([[2, 5]]), gen)
    assert (int(k), int(nxt)) == (1, 3)


def exact_plain_distribution(model, prompt: list[int], n: int, sampling: SamplingConfig) -> torch.Tensor:
    """P(first n generated tokens) under plain sampling [V]*n, from full forwards over every continuation."""
    v = model.cfg.vocab_size
    joint = torch.ones(1, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            contexts = torch.tensor([prompt + list(c) for c in itertools.product(range(v), repeat=i)])
            p = next_token_probs(model.logits(contexts)[:, -1, :v], sampling).double()   # [v^i, v]
            joint = (joint[:, None] * p).reshape(-1)
    return joint.view([v] * n)


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of the counts of `samples` (indices) against `probs`, cells with an expected count < 5
    merged into one (so the chi-square approximation holds)."""
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.reshape(-1).double() * len(samples)
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)


@pytest.mark.parametrize("sampling", [SamplingConfig(1.0), SamplingConfig(0.7, top_k=3, top_p=0.9)],
                         ids=["t1", "t0.7-k3-p0.9"])
def test_sampling_keeps_the_plain_distribution(sampling):
    """Tokens 1-4 from 1500 seeded rows, depth 2 (drafts for tokens 2-3, bonus 4): the pairs (x1, x2),
    (x2, x3), (x3, x4) follow the exact plain-sampling distribution (chi-square, p > 1e-3)."""
    model = tiny_model("tiny-olmoe-ot.yaml", "vocab_size=7", "n_layers=1", "over_decoding.depth=2")
    prompt, n, rows = [1, 2, 3], 4, 1500
    exact = exact_plain_distribution(model, prompt, n, sampling)
    spec = generate_speculative(model, [prompt] * rows, n, sampling, seed=0)
    plain = generate(model, [prompt] * rows, n, sampling, seed=0)           # the reference is plain sampling
    assert 0.1 < spec.acceptance_rate < 0.9, spec.acceptance_rate
    for name, result in (("speculative", spec), ("plain", plain)):
        tokens = torch.tensor(result.tokens)
        for j in range(n - 1):
            pair = exact.sum(dim=[i for i in range(n) if i not in (j, j + 1)])
            assert chi_square_pvalue(tokens[:, j] * 7 + tokens[:, j + 1], pair) > 1e-3, (name, j)
    # the test has power: the drafts' q of x2 is far from the target p(x2 | x1), well beyond the noise
    trace: list = []
    generate_speculative(model, [prompt], n, sampling, seed=0, trace=trace)
    target = exact[trace[0].tokens[len(prompt)]].sum(dim=(1, 2))
    assert (trace[0].draft_probs[0].double() - target / target.sum()).abs().sum() / 2 > 0.1


def test_dropped_slots_are_invisible():
    """Decode a b c, then d e, drop e: the next token's logits are those of the sequence a b c d f, RoPE
    positions and the OE n-gram ids included (the rollback a rejected draft gets)."""
    model = tiny_model()
    seq = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        cache = model.new_decode_cache(1, 16)
        model.decode(seq[:, :3], cache)
        model.decode(seq[:, 3:5], cache)
        cache.drop_last(torch.tensor([1]), seq[:, 2:4])                  # keeps a b c d: history c d
        logits = model.decode(seq[:, 5:], cache)[:, -1]
        ref = model.logits(seq[:, [0, 1, 2, 3, 5]])[:, -1]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert int(cache.count) == 5 and cache.length == 6
    with pytest.raises(ValueError, match="real slots"):
        cache.drop_last(torch.tensor([9]), seq[:, :2])


def test_model_without_mtp_is_refused():
    with pytest.raises(ValueError, match="needs MTP modules"):
        generate_speculative(tiny_model("tiny-olmoe-oe.yaml"), [[1, 2]], 3)
