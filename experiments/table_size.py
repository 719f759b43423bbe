"""Experiment 4: table-size sweep (paper's log-linear law), n = 2, k = 1, seed 0.

    python -m experiments.table_size [--smoke]
Fits final validation loss = a − b·log10(m) by least squares over the sweep and reports a, b and R².
"""
from __future__ import annotations

import math

from experiments.common import parse_args, write_results
from experiments.plots import log_fit
from experiments.train_runs import run_variant
from experiments.variants import SWEEP_M, VARIANTS

NAME = "table_size"


def fit_log_linear(ms: list[int], losses: list[float]) -> tuple[float, float, float]:
    """Least squares loss = a - b·log10(m) -> (a, b, R²)."""
    xs = [math.log10(m) for m in ms]
    mx, my = sum(xs) / len(xs), sum(losses) / len(losses)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, losses)) / sxx
    a = my - slope * mx
    ss_res = sum((y - (a + slope * x)) ** 2 for x, y in zip(xs, losses))
    ss_tot = sum((y - my) ** 2 for y in losses)
    return a, -slope, (1 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    ms = SWEEP_M[:2] if args.smoke else SWEEP_M
    base = run_variant("baseline", VARIANTS["baseline"], 0, args.out, args.smoke)
    recs = {m: run_variant(f"2gram_m{m}", VARIANTS[f"2gram_m{m}"], 0, args.out, args.smoke) for m in ms}
    losses = [recs[m]["final_val_loss"] for m in ms]
    a, b, r2 = fit_log_linear(ms, losses)
    rows = [{"m": m, "table_params": m * recs[m]["model"]["d_model"], "val_loss": round(loss, 4),
             "delta_vs_baseline": round(loss - base["final_val_loss"], 4)} for m, loss in zip(ms, losses)]
    fit = {"a": round(a, 4), "b": round(b, 4), "r2": round(r2, 4)}
    write_results(args.out, NAME, {
        "experiment": NAME, "command": "python -m experiments.table_size", "seeds": [0], "rows": rows,
        "fit": fit, "baseline_val_loss": base["final_val_loss"], "paper_fit": {"a": 2.6754, "b": 0.0256},
        "runs": {m: {k: r[k] for k in ("seed", "overrides", "steps", "final_val_loss")} for m, r in recs.items()}},
        rows)
    log_fit(args.img / f"{NAME}.png", "Exp 4: loss vs OE table size (n=2, k=1)", ms, losses, a, b)
    print(f"fit: loss = {a:.4f} - {b:.4f}·log10(m), R² = {r2:.3f}; baseline {base['final_val_loss']:.4f}")


if __name__ == "__main__":
    main()
