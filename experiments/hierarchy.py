"""Experiment 2: n-gram hierarchy ablation (paper Table 3), seeds 0-2, equal steps.

    python -m experiments.hierarchy [--smoke]
1-gram only (baseline); 2-gram without 1-gram; 1+2; 1+3; 1+2+3 (all k = 1, m = 65,521).
"""
from __future__ import annotations

from experiments.common import run_ablation

NAME = "hierarchy"
LABELS = {"baseline": "1-gram only", "2gram_no_1gram": "2-gram, no 1-gram", "1+2": "1+2-gram",
          "1+3": "1+3-gram", "oe": "1+2+3-gram"}
PAPER = {"baseline": 2.714, "2gram_no_1gram": 2.785, "1+2": 2.670, "1+3": 2.684, "oe": 2.667}  # METHOD.md, k=4


def main() -> None:
    def with_paper(rows: list[dict]) -> None:
        for row in rows:
            row["paper_loss"] = PAPER[row["variant"]]
            row["paper_delta"] = round(PAPER[row["variant"]] - PAPER["baseline"], 3)

    run_ablation(NAME, __doc__.splitlines()[0], LABELS, "Exp 2: n-gram hierarchy (mean of {seeds} seeds)",
                 annotate=with_paper)


if __name__ == "__main__":
    main()
