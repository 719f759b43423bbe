"""Experiment 5: the synthetic CFG experiment (paper §3.1), scaled down to 2 CPU cores.

    python -m experiments.cfg_experiment [--smoke] [--jobs N] [--sizes tiny,small,large] [--steps N] [--root-level L]
Three model sizes x {1-gram baseline, exact 1+2+3-gram input, joint 3-gram output}; generation accuracy = the
fraction of strings sampled at temperature 1 from BOS that the parser accepts (1,000 per model), plus a
graded score (checker.parse_depth: how many grammar levels, from the terminals up, each sample satisfies).

Scale-down of the grammar: the default root level 2 keeps cfg3f's rules but starts from a level-2 symbol
(16/17/18), i.e. the bottom four of its six expansion levels (strings 16-81 long instead of 64-729). With the
full grammar (--root-level 0) no model this size reaches a single valid sample within the CPU budget (see
docs/results.md), so accuracies could not be compared.
Each (size, variant) result is cached in <results>/cfg_runs/, so the command resumes after an interruption.
The paper's size trend for 3-gram output needs a "large" model bigger than its small one (2.4M params); the
command times a training step of that model beside ours ("cost" in cfg.json) to state what such a run would take.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from experiments.common import IMG, write_results  # noqa: E402
from experiments.train_runs import RESULTS, ROOT  # noqa: E402

NAME = "cfg"
# Real runs, per size: steps and peak lr (lr from short pilots: 1e-2 beat 3e-3 for the small model at equal steps).
# Batch 32 windows of 128 tokens (every window starts at a separator, so it holds one whole first string).
# The paper: 20M strings x 10 epochs, batch 512, lr 3e-4.
SETTINGS = {"tiny": {"steps": 3000, "lr": 1e-2}, "small": {"steps": 3000, "lr": 1e-2},
            "large": {"steps": 3000, "lr": 3e-3}}
COMMON = {"batch": 32, "seq_len": 128, "train_strings": 200_000, "samples": 1000, "curve_samples": 200,
          "root_level": 2}
SMOKE = {"steps": 5, "lr": 3e-3, "batch": 2, "seq_len": 96, "train_strings": 50, "samples": 4, "curve_samples": 2,
         "root_level": 2}
SEEDS = [0, 1]      # each seed: model init, training strings and sampling
PAPER = "3-gram input helps both sizes; 3-gram output helps the large model and hurts the small one"


def main() -> None:
    from experiments.cfg.models import SIZES, VARIANTS
    from experiments.cfg.train import seconds_per_step, train_and_evaluate
    from experiments.plots import curves

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="a subset (to split the runs over processes)")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every size")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process and core each [1]")
    p.add_argument("--root-level", type=int, default=None, choices=range(0, 5),
                   help="0 = the full cfg3f grammar; default 2 (its bottom four levels)")
    args = p.parse_args()
    started = time.time()
    out = args.out or (ROOT / "runs/experiments-smoke/results" if args.smoke else RESULTS)
    img = out / "img" if args.smoke else IMG
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    todo = []
    for seed in seeds:                       # seed-major: every comparison at seed 0 is complete first
        for size in args.sizes.split(","):
            for variant in args.variants.split(","):
                settings = dict(SMOKE) if args.smoke else {**COMMON, **SETTINGS[size]}
                settings["seed"] = seed
                if args.steps:
                    settings["steps"] = args.steps
                if args.root_level is not None:
                    settings["root_level"] = args.root_level
                todo.append((out, size, variant, settings, SIZES[size], args.smoke))
    if args.jobs > 1:                        # fresh processes: each run is independent and single-threaded
        todo.sort(key=lambda t: -t[4]["d_model"] * t[4]["n_layers"])    # longest first: the pool finishes together
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            records = list(pool.map(_run_in_process, todo))
    else:
        records = [_run(*t, train_and_evaluate) for t in todo]
    shared = SMOKE if args.smoke else COMMON
    cost = seconds_per_step(["large", "paper_small"], shared["batch"], shared["seq_len"], shared["root_level"],
                            steps=1 if args.smoke else 6, rounds=1 if args.smoke else 3)
    rows = []
    for size in args.sizes.split(","):
        for variant in args.variants.split(","):
            rows.append(_row([r for r in records if r["size"] == size and r["variant"] == variant]))
    write_results(out, NAME, {"experiment": NAME, "command": "python -m experiments.cfg_experiment", "seeds": seeds,
                              "paper_finding": PAPER, "entropy_floor": _entropy_floor(records[0]["root_level"]),
                              "rows": rows, "runs": records, "cost": cost,
                              "timing": {"wall_s": round(time.time() - started, 1), "jobs": args.jobs, "runs": len(records),
                                         "train_s": round(sum(r["total_s"] for r in records), 1)}}, rows)
    curves(img / f"{NAME}.png", "Exp 5: cfg generation accuracy (T = 1) during training",
           {f"{row['size']}/{row['variant']}": [r["accuracy_curve"] for r in records if (r["size"], r["variant"]) ==
                                                (row["size"], row["variant"])] for row in rows},
           ylabel="accuracy (valid samples)")


def _run_in_process(task: tuple) -> dict:
    import torch
    from experiments.cfg.train import train_and_evaluate
    torch.set_num_threads(1)
    return _run(*task, train_and_evaluate)


def _run(out: Path, size: str, variant: str, settings: dict, model: dict, smoke: bool, train) -> dict:
    """Train and evaluate one (size, variant, seed), or reuse its cached record when nothing changed."""
    tag = f"{size}_{variant}_s{settings['seed']}"
    path = out / "cfg_runs" / f"{tag}.json"
    rec = json.loads(path.read_text()) if path.is_file() else None
    if rec is None or rec.get("model") != model or any(rec.get(k) != v for k, v in settings.items()):
        samples_file = ROOT / "runs" / ("experiments-smoke" if smoke else "experiments") / "cfg_samples" / f"{tag}.txt"
        rec = train(size, variant, **settings, samples_file=samples_file)
        rec["model"] = model
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1))
    print(f"{tag:>20}: accuracy {rec['accuracy']:.3f} ({rec['samples']} samples), "
          f"val next-token loss {rec['final_val_next_token_loss']:.4f}", flush=True)
    return rec


def _row(recs: list[dict]) -> dict:
    """One table row over the seeds: accuracy pooled over all samples, with its binomial standard error."""
    import statistics

    n = sum(r["samples"] for r in recs)
    acc = sum(r["accuracy"] * r["samples"] for r in recs) / n
    r0 = recs[0]
    return {"size": r0["size"], "variant": r0["variant"], "params": r0["params"], "steps": r0["steps"],
            "tokens_seen": r0["tokens_seen"], "seeds": len(recs),
            "val_next_token_loss": round(statistics.fmean(r["final_val_next_token_loss"] for r in recs), 4),
            "accuracy": round(acc, 4), "accuracy_se": round((acc * (1 - acc) / n) ** 0.5, 4),
            "per_seed": " / ".join(f"{r['accuracy']:.3f}" for r in recs),
            "mean_parse_depth": round(statistics.fmean(r["mean_parse_depth"] for r in recs), 3),
            "levels": r0["levels"], "samples": n, "median_sample_len": r0["median_sample_len"],
            "train_s": round(statistics.fmean(r["train_s"] for r in recs), 1)}


def _entropy_floor(root_level: int) -> float:
    """Upper bound on the per-token entropy of the training stream (derivation entropy / tokens incl. the
    separator), estimated from 5,000 strings: a model's held-out loss can't go much below it."""
    import math
    import random

    from experiments.cfg.grammar import DEPTH, LEVELS, RULES

    rng, nats, tokens = random.Random(0), 0.0, 0
    for _ in range(5000):
        seq = [rng.choice(LEVELS[root_level])]
        nats += math.log(len(LEVELS[root_level]))
        for _ in range(DEPTH - root_level):
            nats += sum(math.log(len(RULES[sym])) for sym in seq)
            seq = [c for sym in seq for c in rng.choice(RULES[sym])]
        tokens += len(seq) + 1
    return round(nats / tokens, 4)


if __name__ == "__main__":
    main()
