"""Experiment 1: baseline vs OE vs OT at equal steps (paper Table 1 / OT-12.8M).

    python -m experiments.oe_vs_baseline [--smoke]
Five seeds per variant; mean ± std of the final validation loss, the seed-paired deltas with a paired t-test
(experiments.report), and the validation-loss curves.
"""
from __future__ import annotations

from experiments.common import mean_std, parse_args, timing, write_results
from experiments.plots import curves
from experiments.train_runs import run_variant, train_missing
from experiments.variants import VARIANTS

NAME = "oe_vs_baseline"
LABELS = {"baseline": "baseline (1-gram)", "oe": "OE (1+2+3-gram)", "ot": "OT (OE + MTP)"}
SEEDS = [0, 1, 2, 3, 4]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seeds = SEEDS[:1] if args.smoke else SEEDS
    train_missing([(v, VARIANTS[v], s) for v in LABELS for s in seeds], args.out, args.smoke, args.jobs)
    runs = {v: [run_variant(v, VARIANTS[v], s, args.out, args.smoke) for s in seeds] for v in LABELS}
    rows = []
    for v, recs in runs.items():
        mean, std = mean_std([r["final_val_loss"] for r in recs])
        rows.append({"variant": v, "label": LABELS[v], "seeds": len(recs), "val_loss_mean": round(mean, 4),
                     "val_loss_std": round(std, 4), "delta_vs_baseline": None,
                     "paired_delta_mean": None, "paired_delta_std": None,
                     "total_params": recs[0]["params"].get("total"),
                     "forward_flops_per_token": recs[0]["forward_flops_per_token"]})
    base = rows[0]["val_loss_mean"]
    for row, recs in zip(rows, runs.values()):
        row["delta_vs_baseline"] = round(row["val_loss_mean"] - base, 4)
        # paired by seed (same init seed and data order as the baseline): removes most of the seed noise
        paired = [r["final_val_loss"] - b["final_val_loss"] for r, b in zip(recs, runs["baseline"])]
        row["paired_delta_mean"], row["paired_delta_std"] = (round(x, 4) for x in mean_std(paired))
    write_results(args.out, NAME, {
        "experiment": NAME, "command": "python -m experiments.oe_vs_baseline", "seeds": seeds, "rows": rows,
        "timing": timing(args, runs), "runs": {v: [{k: r[k] for k in ("seed", "overrides", "steps", "tokens", "final_val_loss", "val_curve",
                                      "wall_s")} for r in recs] for v, recs in runs.items()},
        "model": runs["baseline"][0]["model"], "optim": runs["baseline"][0]["optim"]}, rows)
    curves(args.img / f"{NAME}.png", "Exp 1: validation loss (Shakespeare V=1024, 2-layer OLMoE D=128)",
           {LABELS[v]: [r["val_curve"] for r in recs] for v, recs in runs.items()})
    for row in rows:
        print(f"{row['label']:>22}: {row['val_loss_mean']:.4f} ± {row['val_loss_std']:.4f} "
              f"(paired {row['paired_delta_mean']:+.4f} ± {row['paired_delta_std']:.4f})")


if __name__ == "__main__":
    main()
