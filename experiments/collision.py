"""Experiment 3: hash collisions (paper Table 4): m an exact multiple of V vs a coprime m of the same size.

    python -m experiments.collision [--smoke]
n = 2, k = 1, seeds 0-2: m = 64·V = 65,536 (the 2-gram id keeps x_{i-1} mod 64 only) vs m = 65,521 (prime).
The paper used m = 64·V = 3.2M at V = 50,280; at V = 1,024 the same multiple is 65,536 rows.
"""
from __future__ import annotations

from experiments.common import run_ablation

NAME = "collision"
LABELS = {"baseline": "baseline", "m_64V": "m = 64·V = 65536", "1+2": "m = 65521 (coprime)"}


def main() -> None:
    run_ablation(NAME, __doc__.splitlines()[0], LABELS, "Exp 3: m multiple of V vs coprime (n=2, k=1; {seeds} seeds)",
                 extra={"paper": {"baseline": 2.714, "m=64V": 2.702, "m=3.2M": 2.678}})


if __name__ == "__main__":
    main()
