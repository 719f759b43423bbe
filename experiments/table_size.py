"""Experiment 4: table-size sweep (paper's log-linear law), n = 2, k = 1, seeds 0-2.

    python -m experiments.table_size [--smoke]
Fits the seed-mean final validation loss = a − b·log10(m) by least squares and reports a, b and R².
"""
from __future__ import annotations

import math

from experiments.common import ABLATION_SEEDS, parse_args, run_summaries, seed_runs, timing, write_results
from experiments.plots import log_fit
from experiments.variants import MAIN_M, SWEEP_M, VARIANTS

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
    seeds = ABLATION_SEEDS[:1] if args.smoke else ABLATION_SEEDS
    # m = MAIN_M is the same configuration as hierarchy's "1+2": reuse those runs
    names = {m: "1+2" if m == MAIN_M else f"2gram_m{m}" for m in ms}
    from experiments.train_runs import train_missing
    train_missing([(v, VARIANTS[v], s) for v in ["baseline", *names.values()] for s in seeds], args.out,
                  args.smoke, args.jobs)
    base = seed_runs("baseline", VARIANTS["baseline"], seeds, args.out, args.smoke)
    results = {m: seed_runs(names[m], VARIANTS[names[m]], seeds, args.out, args.smoke) for m in ms}
    losses = [results[m]["mean"] for m in ms]
    a, b, r2 = fit_log_linear(ms, losses)
    rows = [{"m": m, "table_params": m * results[m]["records"][0]["model"]["d_model"], "val_loss": round(loss, 4),
             "delta_vs_baseline": round(loss - base["mean"], 4),
             "per_seed": " / ".join(f"{x:.4f}" for x in results[m]["per_seed"].values())}
            for m, loss in zip(ms, losses)]
    fit = {"a": round(a, 4), "b": round(b, 4), "r2": round(r2, 4)}
    write_results(args.out, NAME, {
        "experiment": NAME, "command": "python -m experiments.table_size", "seeds": seeds, "rows": rows,
        "fit": fit, "baseline_val_loss": base["mean"], "paper_fit": {"a": 2.6754, "b": 0.0256},
        "timing": timing(args, {"baseline": base, **{str(m): r for m, r in results.items()}}),
        "runs": run_summaries({str(m): r for m, r in results.items()})}, rows)
    log_fit(args.img / f"{NAME}.png", f"Exp 4: loss vs OE table size (n=2, k=1; {len(seeds)} seeds)", ms, losses, a, b)
    print(f"fit: loss = {a:.4f} - {b:.4f}·log10(m), R² = {r2:.3f}; baseline {base['mean']:.4f}")


if __name__ == "__main__":
    main()
