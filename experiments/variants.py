"""The named model variants of experiments 1-4: dotted overrides on experiments/configs/shakespeare_v1024.yaml.

All variants share the backbone, data order (per seed), steps and optimiser, so they are compared at equal
steps and equal dense compute (OE adds only its D x D projection, 2·D² FLOPs per token). Main OE setting:
n = 3, k = 1 (two tables of width D/2 = 64; the paper keeps table width ~256 at D = 1024), m = 65,521 (prime,
so coprime with V = 1,024 = 2^10). The tables train with the model's AdamW (parallel.table_optimizer: adamw).
"""
from __future__ import annotations

OE = "model.over_encoding"
VOCAB = 1024
MAIN_M = 65521


def oe(n: int = 3, k: int = 1, m: int = MAIN_M, *extra: str) -> list[str]:
    return [f"{OE}.enabled=true", f"{OE}.n={n}", f"{OE}.k={k}", f"{OE}.m={m}", *extra]


VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "oe": oe(),                                                      # 1+2+3-gram, k = 1
    "ot": oe() + ["model.over_decoding.mode=mtp"],                  # OE + MTP-DS depth 1, lambda 0.1
    # hierarchy (paper Table 3); "1-gram only" is the baseline and "1+2+3" is "oe"
    "2gram_no_1gram": oe(2, 1, MAIN_M, f"{OE}.unigram=false"),
    "1+2": oe(2),
    "1+3": oe(3, 1, MAIN_M, f"{OE}.orders=[3]"),
    # collision (paper Table 4): m = 64·V, exactly the paper's multiple, keeps only x_{i-1} mod 64 in the 2-gram
    # id (x_i + V·x_{i-1} mod 64·V); the coprime twin of about the same size is "1+2" (m = 65,521)
    "m_64V": oe(2, 1, 64 * VOCAB, f"{OE}.allow_vocab_multiple=true"),
}
# table-size sweep (n = 2, k = 1): primes about x4 apart, 2.4 decades, all below the 81k distinct 2-grams of a
# run's 1.23M tokens (beyond that a larger table adds no rows that are ever looked up); 65,521 is "1+2"
SWEEP_M = [257, 1021, 4093, 16381, 65521]
for _m in SWEEP_M:
    VARIANTS[f"2gram_m{_m}"] = oe(2, 1, _m)
