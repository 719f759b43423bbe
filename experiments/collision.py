"""Experiment 3: hash collisions (paper Table 4): m an exact multiple of V vs a coprime m of the same size.

    python -m experiments.collision [--smoke]
n = 2, k = 1, seeds 0 and 1: m = 8·V = 65,536 (the 2-gram id keeps x_{i-1} mod 8 only) vs m = 65,537 (prime).
The paper used m = 64·V = 3.2M; 64·V rows would be 4.2M x 128 here, too big for the CPU budget.
"""
from __future__ import annotations

from experiments.common import ABLATION_SEEDS, ablation_rows, parse_args, run_summaries, seed_runs, write_results
from experiments.plots import bars
from experiments.variants import VARIANTS

NAME = "collision"
LABELS = {"baseline": "baseline", "m_8V": "m = 8·V = 65536", "1+2": "m = 65537 (coprime)"}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seeds = ABLATION_SEEDS[:1] if args.smoke else ABLATION_SEEDS
    results = {v: seed_runs(v, VARIANTS[v], seeds, args.out, args.smoke) for v in LABELS}
    rows = ablation_rows(results, LABELS)
    write_results(args.out, NAME, {"experiment": NAME, "command": "python -m experiments.collision", "seeds": seeds,
                                   "rows": rows, "paper": {"baseline": 2.714, "m=64V": 2.702, "m=3.2M": 2.678},
                                   "runs": run_summaries(results)}, rows)
    bars(args.img / f"{NAME}.png", f"Exp 3: m multiple of V vs coprime (n=2, k=1; {len(seeds)} seeds)",
         [r["label"] for r in rows], [r["val_loss"] for r in rows], baseline=results["baseline"]["mean"])
    for row in rows:
        print(f"{row['label']:>22}: {row['val_loss']:.4f} (paired {row['delta_vs_baseline']:+.4f})")


if __name__ == "__main__":
    main()
