"""Shared command-line handling and result writing for the experiment modules."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

from experiments.train_runs import RESULTS, ROOT

IMG = ROOT / "docs/img"


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a few steps per run, results under --out (CI)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default experiments/results; with --smoke runs/experiments-smoke/results)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process and core each [1]")
    args = p.parse_args()
    args.started = time.time()
    if args.out is None:
        args.out = ROOT / "runs/experiments-smoke/results" if args.smoke else RESULTS
    args.img = args.out / "img" if args.smoke else IMG
    return args


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_results(out: Path, name: str, payload: dict, rows: list[dict]) -> Path:
    """<out>/<name>.json (everything, incl. commands/seeds/configs) and <out>/<name>.csv (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    if rows:
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


ABLATION_SEEDS = [0, 1, 2]   # experiments 2-4; every variant shares each seed's data order (paired deltas)


def timing(args: argparse.Namespace, results: dict) -> dict:
    """The experiment's wall time: this command's, and the training time of all its runs as recorded when
    each was trained (a run shared with another experiment, or reused from the cache, counts here too)."""
    recs = [r for res in results.values() for r in (res["records"] if isinstance(res, dict) else res)]
    return {"wall_s": round(time.time() - args.started, 1), "train_s": round(sum(r["wall_s"] for r in recs), 1),
            "jobs": args.jobs, "runs": len(recs)}


def seed_runs(name: str, overrides: list[str], seeds: list[int], out: Path, smoke: bool) -> dict:
    """Train/reuse `name` at every seed -> {"mean": ..., "per_seed": {seed: loss}, "records": [...]}."""
    from experiments.train_runs import run_variant

    recs = [run_variant(name, overrides, s, out, smoke) for s in seeds]
    losses = [r["final_val_loss"] for r in recs]
    return {"mean": sum(losses) / len(losses), "per_seed": dict(zip(seeds, losses)), "records": recs}


def ablation_rows(results: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Rows of a single-table ablation: seed-mean loss and the seed-paired difference to the baseline."""
    base = results["baseline"]
    rows = []
    for v, res in results.items():
        paired = [res["per_seed"][s] - base["per_seed"][s] for s in res["per_seed"]]
        rows.append({"variant": v, "label": labels[v], "seeds": len(paired), "val_loss": round(res["mean"], 4),
                     "delta_vs_baseline": round(sum(paired) / len(paired), 4),
                     "per_seed": " / ".join(f"{x:.4f}" for x in res["per_seed"].values())})
    return rows


def run_summaries(results: dict) -> dict:
    return {v: [{k: r[k] for k in ("seed", "overrides", "steps", "final_val_loss", "val_curve")}
                for r in res["records"]] for v, res in results.items()}


def run_ablation(name: str, description: str, labels: dict[str, str], title: str, extra: dict | None = None,
                 annotate=None, seeds: list[int] = ABLATION_SEEDS) -> None:
    """The single-table ablations (experiments 2 and 3): train/reuse every variant at the ablation seeds, write
    <name>.json/.csv (seed-paired deltas vs the baseline) and a bar chart. `annotate(rows)` may add columns."""
    from experiments.plots import bars
    from experiments.variants import VARIANTS

    from experiments.train_runs import train_missing

    args = parse_args(description)
    seeds = seeds[:1] if args.smoke else seeds
    train_missing([(v, VARIANTS[v], s) for v in labels for s in seeds], args.out, args.smoke, args.jobs)
    results = {v: seed_runs(v, VARIANTS[v], seeds, args.out, args.smoke) for v in labels}
    rows = ablation_rows(results, labels)
    if annotate is not None:
        annotate(rows)
    write_results(args.out, name, {"experiment": name, "command": f"python -m experiments.{name}", "seeds": seeds,
                                   "rows": rows, **(extra or {}), "timing": timing(args, results),
                                   "runs": run_summaries(results)}, rows)
    bars(args.img / f"{name}.png", title.format(seeds=len(seeds)), [r["label"] for r in rows],
         [r["val_loss"] for r in rows], baseline=results["baseline"]["mean"])
    for row in rows:
        print(f"{row['label']:>22}: {row['val_loss']:.4f} (paired {row['delta_vs_baseline']:+.4f})")
