"""Experiment 2: n-gram hierarchy ablation (paper Table 3), seed 0, equal steps.

    python -m experiments.hierarchy [--smoke]
1-gram only (baseline); 2-gram without 1-gram; 1+2; 1+3; 1+2+3 (all k = 1, m = 65,537).
"""
from __future__ import annotations

from experiments.common import parse_args, write_results
from experiments.plots import bars
from experiments.train_runs import run_variant
from experiments.variants import VARIANTS

NAME = "hierarchy"
LABELS = {"baseline": "1-gram only", "2gram_no_1gram": "2-gram, no 1-gram", "1+2": "1+2-gram",
          "1+3": "1+3-gram", "oe": "1+2+3-gram"}
PAPER = {"baseline": 2.714, "2gram_no_1gram": 2.785, "1+2": 2.670, "1+3": 2.684, "oe": 2.667}  # METHOD.md, k=4


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    recs = {v: run_variant(v, VARIANTS[v], 0, args.out, args.smoke) for v in LABELS}
    base = recs["baseline"]["final_val_loss"]
    rows = [{"variant": v, "label": LABELS[v], "val_loss": round(r["final_val_loss"], 4),
             "delta_vs_baseline": round(r["final_val_loss"] - base, 4), "paper_loss": PAPER[v],
             "paper_delta": round(PAPER[v] - PAPER["baseline"], 3)} for v, r in recs.items()]
    write_results(args.out, NAME, {
        "experiment": NAME, "command": "python -m experiments.hierarchy", "seeds": [0], "rows": rows,
        "runs": {v: {k: r[k] for k in ("seed", "overrides", "steps", "final_val_loss", "val_curve")}
                 for v, r in recs.items()}}, rows)
    bars(args.img / f"{NAME}.png", "Exp 2: n-gram hierarchy (seed 0)", [r["label"] for r in rows],
         [r["val_loss"] for r in rows], baseline=base)
    for row in rows:
        print(f"{row['label']:>18}: {row['val_loss']:.4f} ({row['delta_vs_baseline']:+.4f})")


if __name__ == "__main__":
    main()
