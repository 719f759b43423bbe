"""Experiment 3: hash collisions (paper Table 4): m an exact multiple of V vs a coprime m of the same size.

    python -m experiments.collision [--smoke]
n = 2, k = 1, seed 0: m = 8·V = 65,536 (the 2-gram id keeps x_{i-1} mod 8 only) vs m = 65,537 (prime).
The paper used m = 64·V = 3.2M; 64·V rows would be 4.2M x 128 here, too big for the CPU budget.
"""
from __future__ import annotations

from experiments.common import parse_args, write_results
from experiments.plots import bars
from experiments.train_runs import run_variant
from experiments.variants import VARIANTS

NAME = "collision"
LABELS = {"baseline": "baseline", "m_8V": "m = 8·V = 65536", "1+2": "m = 65537 (coprime)"}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    recs = {v: run_variant(v, VARIANTS[v], 0, args.out, args.smoke) for v in LABELS}
    base = recs["baseline"]["final_val_loss"]
    rows = [{"variant": v, "label": LABELS[v], "val_loss": round(r["final_val_loss"], 4),
             "delta_vs_baseline": round(r["final_val_loss"] - base, 4)} for v, r in recs.items()]
    write_results(args.out, NAME, {
        "experiment": NAME, "command": "python -m experiments.collision", "seeds": [0], "rows": rows,
        "paper": {"baseline": 2.714, "m=64V": 2.702, "m=3.2M": 2.678},
        "runs": {v: {k: r[k] for k in ("seed", "overrides", "steps", "final_val_loss", "val_curve")}
                 for v, r in recs.items()}}, rows)
    bars(args.img / f"{NAME}.png", "Exp 3: m multiple of V vs coprime (n=2, k=1)", [r["label"] for r in rows],
         [r["val_loss"] for r in rows], baseline=base)
    for row in rows:
        print(f"{row['label']:>22}: {row['val_loss']:.4f} ({row['delta_vs_baseline']:+.4f})")


if __name__ == "__main__":
    main()
