"""Weighted data mixtures: realized shares, world-size independence, exact resume (also across a mixture
change), tokenizer mismatch, zero-weight and too-short sources, max_repetition."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.base import ConfigError
from pipeline.config.run import DataConfig, SourceConfig
from pipeline.data.loader import DataMismatchError, build_loaders
from pipeline.data.mixture import Blend
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

VOCAB, EOS = 600, 599
# Each source's tokens live in its own id band, so every window tells which source it came from.
BANDS = {"web": 0, "code": 200, "math": 400}


def band_docs(band: int, n: int, seed: int, max_len: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.append(band + rng.integers(0, 150, size=int(rng.integers(3, max_len))), EOS).astype(np.int64)
            for _ in range(n)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for i, (name, band) in enumerate(BANDS.items()):
        write_shard_folder(root / name, {"train": band_docs(band, 400 // (i + 1), seed=i),
                                         "val": band_docs(band, 20, seed=10 + i)}, VOCAB, EOS, docs_per_shard=60)
    return root


def source_of(window: np.ndarray) -> str:
    body = window[window != EOS]
    return next(n for n, b in BANDS.items() if b <= body.min() and body.max() < b + 200)


def mix_cfg(root, weights: dict, tmp_path=None, **kw) -> DataConfig:
    cfg = DataConfig(sources=[SourceConfig(name=n, path=str(root / n), weight=w, max_repetition=kw.pop(f"rep_{n}", None))
                              for n, w in weights.items()], seq_len=16, **kw)
    cfg.validate()
    return cfg


def loaders(cfg, dp_rank=0, dp_size=1, global_batch=8, micro_batch=2, max_steps=None):
    return build_loaders(cfg, VOCAB, seed=3, global_batch=global_batch, micro_batch=micro_batch, eval_batches=2,
                         dp_rank=dp_rank, dp_size=dp_size, max_steps=max_steps)


def global_windows(train, steps: int) -> list[np.ndarray]:
    out = []
    for _ in range(steps):
        for b in train.next_step():
            out.extend(b["input_ids"])
    return out


def test_blend_shares_are_exact_at_every_prefix():
    weights = [0.55, 0.3, 0.15, 0.0]
    blend = Blend(weights)
    src, k = blend.locate(0, 20_000)
    for s, w in enumerate(weights):
        assert np.array_equal(k[src == s], np.arange((src == s).sum()))   # each source read in order, once
        for n in (10, 137, 2_000, 20_000):
            assert abs((src[:n] == s).sum() - n * w) <= 1.5                # within a sequence at every prefix
    assert np.array_equal(blend.counts(12_345), np.bincount(src[:12_345], minlength=4))
    pieces = np.concatenate([blend.locate(a, 91)[0] for a in range(0, 20_000, 91)])[:20_000]
    assert np.array_equal(pieces, src)                                      # any block, same answer


def test_realized_token_shares_match_the_weights(sources):
    weights = {"web": 0.5, "code": 0.3, "math": 0.2}
    train, _, _ = loaders(mix_cfg(sources, weights))
    windows = global_windows(train, 260)            # 2,080 sequences
    assert len(windows) >= 2000
    counts = {n: 0 for n in BANDS}
    for w in windows:
        counts[source_of(w)] += len(w)
    total = sum(counts.values())
    for name, w in weights.items():
        assert abs(counts[name] / total - w) < 0.01, (name, counts[name] / total)
    metrics = train.source_metrics()
    assert sum(metrics[f"data/{n}/tokens"] for n in BANDS) == total
    assert metrics["data/web/tokens"] == counts["web"]


def test_same_global_order_at_world_1_and_2(sources):
    cfg = mix_cfg(sources, {"web": 0.6, "code": 0.4})
    one, _, _ = loaders(cfg)
    two = [loaders(cfg, dp_rank=r, dp_size=2)[0] for r in range(2)]
    for _ in range(5):
        ref = np.concatenate([b["input_ids"] for b in one.next_step()])
        per_rank = [t.next_step() for t in two]      # micro-batch m of rank r = chunk m * 2 + r
        got = np.concatenate([per_rank[r][m]["input_ids"] for m in range(len(per_rank[0])) for r in range(2)])
        assert np.array_equal(ref, got)


def test_resume_is_exact_and_a_new_mixture_continues_each_source(sources):
    cfg = mix_cfg(sources, {"web": 0.5, "code": 0.5})
    straight, _, _ = loaders(cfg)
    ref = global_windows(straight, 12)
    first, _, _ = loaders(cfg)
    global_windows(first, 5)
    state = first.state_dict()
    resumed, _, _ = loaders(cfg)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(global_windows(resumed, 7), ref[5 * 8:]))

    # New weights (and a new source) from step 5 on: web and code continue where they stopped.
    seen_before = {n: [w.tolist() for w in ref[:40] if source_of(w) == n] for n in ("web", "code")}
    changed, _, _ = loaders(mix_cfg(sources, {"web": 0.2, "code": 0.3, "math": 0.5}))
    changed.load_state_dict(state)
    after = global_windows(changed, 7)
    web_then = [w.tolist() for w in after if source_of(w) == "web"]
    web_straight = [w.tolist() for w in ref if source_of(w) == "web"]
    assert web_then == web_straight[len(seen_before["web"]): len(seen_before["web"]) + len(web_then)]
    assert abs(sum(source_of(w) == "math" for w in after) / len(after) - 0.5) < 0.05
    again, _, _ = loaders(mix_cfg(sources, {"web": 0.2, "code": 0.3, "math": 0.5}))
    again.load_state_dict(changed.state_dict())    # the changed mixture itself resumes exactly
    assert changed.sequences.state() == again.sequences.state()


def test_tokenizer_mismatch_is_refused(sources, tmp_path):
    write_shard_folder(tmp_path / "other", {"train": band_docs(0, 50, 1), "val": band_docs(0, 5, 2)}, VOCAB, EOS,
                       tokenizer_sha256="cd" * 32)
    cfg = DataConfig(sources=[SourceConfig("web", str(sources / "web")), SourceConfig("other", str(tmp_path / "other"))],
                     seq_len=16)
    with pytest.raises(DataMismatchError, match=r"data.sources\[1\] \(other\).*share one tokenizer"):
        loaders(cfg)


def test_zero_weight_source_is_validated_but_never_trained_on(sources):
    train, vals, _ = loaders(mix_cfg(sources, {"web": 1.0, "code": 0.0}), max_steps=20)
    assert {source_of(w) for w in global_windows(train, 20)} == {"web"}
    assert [(v.name, v.weight) for v in vals] == [("web", 1.0), ("code", 0.0)]
    assert train.source_metrics()["data/code/tokens"] == 0
    with pytest.raises(ConfigError, match="every weight is 0"):
        mix_cfg(sources, {"web": 0.0, "code": 0.0})


def test_source_shorter_than_one_sequence_is_named(sources, tmp_path):
    write_shard_folder(tmp_path / "tiny", {"train": band_docs(0, 1, 1, max_len=4), "val": band_docs(0, 5, 2)},
                       VOCAB, EOS)
    cfg = DataConfig(sources=[SourceConfig("web", str(sources / "web")), SourceConfig("tiny", str(tmp_path / "tiny"))],
                     seq_len=16)
    with pytest.raises(DataMismatchError, match=r"data.sources\[1\] \(tiny\).*fewer than one sequence"):
        loaders(cfg)


def test_max_repetition_is_checked_at_start_with_the_numbers(sources):
    cfg = mix_cfg(sources, {"web": 0.5, "math": 0.5}, rep_math=2.0)
    per_epoch = loaders(cfg)[0].sequences.sources[1].samples_per_epoch
    steps_ok = (2 * per_epoch * 2) // 8 - 2               # just under 2 epochs of math at share 0.5
    loaders(cfg, max_steps=steps_ok)
    with pytest.raises(DataMismatchError, match=rf"data.sources\[1\] \(math\).*epochs of its {per_epoch} "
                                                r"sequences, more than max_repetition=2.0"):
        loaders(cfg, max_steps=steps_ok + 20)
