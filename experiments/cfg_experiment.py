"""Experiment 5: the synthetic CFG experiment (paper §3.1), scaled down to 2 CPU cores.

    python -m experiments.cfg_experiment [--smoke] [--sizes small,large] [--steps N]
Two model sizes x {1-gram baseline, exact 1+2+3-gram input, joint 3-gram output}; generation accuracy = the
fraction of strings sampled at temperature 1 from BOS that the cfg3f parser accepts (1,000 per model), plus a
graded score (checker.parse_depth: how many grammar levels, from the terminals up, each sample satisfies).
Each (size, variant) result is cached in <results>/cfg_runs/, so the command resumes after an interruption.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from experiments.common import IMG, write_results  # noqa: E402
from experiments.train_runs import RESULTS, ROOT  # noqa: E402

NAME = "cfg"
# Real runs: per size (steps, lr); batch 16 windows of 512 tokens. The paper: 20M strings, 10 epochs, batch 512.
SETTINGS = {"small": {"steps": 200, "lr": 3e-3}, "large": {"steps": 200, "lr": 3e-3}}
COMMON = {"batch": 16, "seq_len": 512, "train_strings": 20_000, "samples": 1000, "seed": 0}
SMOKE = {"steps": 2, "lr": 3e-3, "batch": 2, "seq_len": 64, "train_strings": 50, "samples": 4, "seed": 0}
PAPER = "3-gram input helps both sizes; 3-gram output helps the large model and hurts the small one"


def main() -> None:
    from experiments.cfg.models import SIZES, VARIANTS
    from experiments.cfg.train import train_and_evaluate
    from experiments.plots import bars

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--steps", type=int, default=None, help="override the steps of every size")
    args = p.parse_args()
    out = args.out or (ROOT / "runs/experiments-smoke/results" if args.smoke else RESULTS)
    img = out / "img" if args.smoke else IMG
    records = []
    for size in args.sizes.split(","):
        for variant in VARIANTS:
            settings = dict(SMOKE) if args.smoke else {**COMMON, **SETTINGS[size]}
            if args.steps:
                settings["steps"] = args.steps
            path = out / "cfg_runs" / f"{size}_{variant}.json"
            rec = json.loads(path.read_text()) if path.is_file() else None
            if rec is None or "mean_parse_depth" not in rec or any(rec.get(k) != v for k, v in settings.items()):
                samples_file = ROOT / "runs" / ("experiments-smoke" if args.smoke else "experiments") / \
                    "cfg_samples" / f"{size}_{variant}.txt"
                rec = train_and_evaluate(size, variant, **settings, samples_file=samples_file)
                rec["model"] = SIZES[size]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec, indent=1))
            print(f"{size:>5} {variant:>9}: accuracy {rec['accuracy']:.3f} ({rec['samples']} samples), "
                  f"val next-token loss {rec['final_val_next_token_loss']:.4f}", flush=True)
            records.append(rec)
    rows = [{"size": r["size"], "variant": r["variant"], "params": r["params"], "steps": r["steps"],
             "tokens_seen": r["tokens_seen"], "val_next_token_loss": round(r["final_val_next_token_loss"], 4),
             "accuracy": round(r["accuracy"], 4), "mean_parse_depth": round(r["mean_parse_depth"], 3),
             "segments_level3": round(r["depth_at_least"]["3"], 4), "samples": r["samples"],
             "median_sample_len": r["median_sample_len"]} for r in records]
    write_results(out, NAME, {"experiment": NAME, "command": "python -m experiments.cfg_experiment",
                              "paper_finding": PAPER, "rows": rows, "runs": records}, rows)
    bars(img / f"{NAME}.png", "Exp 5: cfg3f generation accuracy (T = 1)",
         [f"{r['size']}/{r['variant']}" for r in rows], [r["mean_parse_depth"] for r in rows],
         ylabel="mean levels parsed (0-6; 6 = valid)")


if __name__ == "__main__":
    main()
