"""Experiment 2: n-gram hierarchy ablation (paper Table 3), seeds 0-4, equal steps.

    python -m experiments.hierarchy [--smoke]
1-gram only (baseline); 2-gram without 1-gram; 1+2; 1+3; 1+2+3 (all k = 1, m = 65,521). Five seeds, not
three: the paper's 1+2+3 vs 1+2 step is small (0.003 at OLMoE-1.3B), and three paired seeds leave it at p = 0.06
here; the baseline and 1+2+3 runs are shared with experiment 1.
"""
from __future__ import annotations

from experiments.common import run_ablation

NAME = "hierarchy"
LABELS = {"baseline": "1-gram only", "2gram_no_1gram": "2-gram, no 1-gram", "1+2": "1+2-gram",
          "1+3": "1+3-gram", "oe": "1+2+3-gram"}
SEEDS = [0, 1, 2, 3, 4]
PAPER = {"baseline": 2.714, "2gram_no_1gram": 2.785, "1+2": 2.670, "1+3": 2.684, "oe": 2.667}  # paper Table 3, k = 4


def main() -> None:
    def with_paper(rows: list[dict]) -> None:
        for row in rows:
            row["paper_loss"] = PAPER[row["variant"]]
            row["paper_delta"] = round(PAPER[row["variant"]] - PAPER["baseline"], 3)

    run_ablation(NAME, __doc__.splitlines()[0], LABELS, "Exp 2: n-gram hierarchy (mean of {seeds} seeds)",
                 annotate=with_paper, seeds=SEEDS)


if __name__ == "__main__":
    main()
