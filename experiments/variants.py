"""The named model variants of experiments 1-4: dotted overrides on experiments/configs/shakespeare.yaml.

All variants share the backbone, data order (per seed), steps and optimiser, so they are compared at equal
steps and equal dense compute (OE adds only its D x D projection, 2·D² FLOPs per token). Main OE setting:
n = 3, k = 1 (two tables of width D/2 = 64; the paper keeps table width ~256 at D = 1024), m = 65,537 (prime).
"""
from __future__ import annotations

OE = "model.over_encoding"
MAIN_M = 65537


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
    # collision (paper Table 4): m = 8·V keeps only x_{i-1} mod 8 in the 2-gram id; the coprime twin is "1+2"
    "m_8V": oe(2, 1, 8 * 8192, f"{OE}.allow_vocab_multiple=true"),
}
# table-size sweep (n = 2, k = 1): odd moduli (coprime with V = 2^13), about x4 apart; 65537 is "1+2"
SWEEP_M = [1021, 4093, 16381, 65537, 262147]
for _m in SWEEP_M:
    VARIANTS[f"2gram_m{_m}"] = oe(2, 1, _m)
