"""Train one variant of experiments/configs/shakespeare.yaml in-process through the project's trainer
(pipeline.train.build.build_trainer: the same path as launch/train.py) and keep a compact JSON record.

A record is cached under <results>/runs/<name>_s<seed>.json and reused when its overrides, seed and step
count match, so variants shared by several experiments (e.g. the baseline) train once and an interrupted
queue resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see launch/train.py: 5x faster under CPU contention
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "experiments/configs/shakespeare.yaml"
RESULTS = ROOT / "experiments/results"
# Smoke mode: the same code path in a few seconds (CI); numbers are meaningless.
SMOKE_OVERRIDES = ["train.max_steps=4", "schedule.warmup_steps=1", "eval.every=2", "eval.batches=1", "log.every=2"]


def _read_metrics(path: Path) -> tuple[list[list[float]], list[list[float]]]:
    val, train = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            val.append([rec["step"], rec["val_loss"]])
        if "lm_loss" in rec:
            train.append([rec["step"], rec["lm_loss"]])
    return val, train


def run_variant(name: str, overrides: list[str], seed: int, out_dir: Path = RESULTS, smoke: bool = False,
                steps: int | None = None) -> dict:
    """Train (or reuse) variant `name` with `overrides` at `seed`; returns the run record."""
    overrides = list(overrides) + [f"train.seed={seed}"] + ([f"train.max_steps={steps}"] if steps else [])
    if smoke:
        overrides += SMOKE_OVERRIDES
    record_path = out_dir / "runs" / f"{name}_s{seed}.json"
    if record_path.is_file():
        cached = json.loads(record_path.read_text())
        if cached.get("overrides") == overrides:
            return cached

    from pipeline.config.run import load_run_config
    from pipeline.model.flops import forward_flops_per_token, param_counts
    from pipeline.train.build import build_trainer

    run_dir = ROOT / "runs" / ("experiments-smoke" if smoke else "experiments") / f"{name}_s{seed}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()                       # resume=never: a rerun starts from scratch
    cfg = load_run_config(BASE_CONFIG, overrides + [f"run_dir={run_dir}", f"data.path={ROOT / 'data/demo/shards'}"])
    t0 = time.time()
    trainer = build_trainer(cfg)
    trainer.fit()
    val, train = _read_metrics(metrics)
    counts = param_counts(cfg.model)
    record = {
        "name": name, "seed": seed, "overrides": overrides, "steps": cfg.train.max_steps,
        "tokens": cfg.train.max_steps * cfg.train.global_batch_size * cfg.data.seq_len,
        "final_val_loss": val[-1][1] if val else None, "val_curve": val, "train_curve": train,
        "wall_s": round(time.time() - t0, 1),
        "params": {k: int(v) for k, v in counts.items() if isinstance(v, (int, float))},
        "forward_flops_per_token": int(forward_flops_per_token(cfg.model)),
        "model": asdict(cfg.model), "optim": asdict(cfg.optim),
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1))
    return record
