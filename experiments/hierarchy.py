"""Experiment 2: n-gram hierarchy ablation (paper Table 3), seeds 0 and 1, equal steps.

    python -m experiments.hierarchy [--smoke]
1-gram only (baseline); 2-gram without 1-gram; 1+2; 1+3; 1+2+3 (all k = 1, m = 65,537).
"""
from __future__ import annotations

from experiments.common import ABLATION_SEEDS, ablation_rows, parse_args, run_summaries, seed_runs, write_results
from experiments.plots import bars
from experiments.variants import VARIANTS

NAME = "hierarchy"
LABELS = {"baseline": "1-gram only", "2gram_no_1gram": "2-gram, no 1-gram", "1+2": "1+2-gram",
          "1+3": "1+3-gram", "oe": "1+2+3-gram"}
PAPER = {"baseline": 2.714, "2gram_no_1gram": 2.785, "1+2": 2.670, "1+3": 2.684, "oe": 2.667}  # METHOD.md, k=4


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seeds = ABLATION_SEEDS[:1] if args.smoke else ABLATION_SEEDS
    results = {v: seed_runs(v, VARIANTS[v], seeds, args.out, args.smoke) for v in LABELS}
    rows = ablation_rows(results, LABELS)
    for row in rows:
        row["paper_loss"], row["paper_delta"] = PAPER[row["variant"]], round(PAPER[row["variant"]] - PAPER["baseline"], 3)
    write_results(args.out, NAME, {"experiment": NAME, "command": "python -m experiments.hierarchy", "seeds": seeds,
                                   "rows": rows, "runs": run_summaries(results)}, rows)
    bars(args.img / f"{NAME}.png", f"Exp 2: n-gram hierarchy (mean of {len(seeds)} seeds)",
         [r["label"] for r in rows], [r["val_loss"] for r in rows], baseline=results["baseline"]["mean"])
    for row in rows:
        print(f"{row['label']:>18}: {row['val_loss']:.4f} (paired {row['delta_vs_baseline']:+.4f})")


if __name__ == "__main__":
    main()
