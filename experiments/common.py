"""Shared command-line handling and result writing for the experiment modules."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from experiments.train_runs import RESULTS, ROOT

IMG = ROOT / "docs/img"


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a few steps per run, results under --out (CI)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default experiments/results; with --smoke runs/experiments-smoke/results)")
    args = p.parse_args()
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
