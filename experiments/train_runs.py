"""Train one variant of an experiment base config in-process through the project's trainer
(pipeline.train.build.build_trainer: the same path as launch/train.py) and keep a compact JSON record.

A record is cached under <results>/runs/<name>_s<seed>.json and reused when its base config, overrides, seed
and step count match, so variants shared by several experiments (e.g. the baseline) train once and an
interrupted queue resumes where it stopped. `train_missing` trains a queue of runs in parallel processes.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import yaml

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see launch/train.py: 5x faster under CPU contention
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "experiments/configs/shakespeare_v1024.yaml"       # experiments 1-4
V8192_CONFIG = ROOT / "experiments/configs/shakespeare_v8192.yaml"      # the earlier scale (investigation)
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


def _full_overrides(overrides: list[str], seed: int, smoke: bool, steps: int | None) -> list[str]:
    full = list(overrides) + [f"train.seed={seed}"] + ([f"train.max_steps={steps}"] if steps else [])
    return full + SMOKE_OVERRIDES if smoke else full


def cached_record(name: str, overrides: list[str], seed: int, out_dir: Path = RESULTS, smoke: bool = False,
                  steps: int | None = None, base_config: Path = BASE_CONFIG) -> dict | None:
    """The stored record of this exact run, or None."""
    record_path = out_dir / "runs" / f"{name}_s{seed}.json"
    if not record_path.is_file():
        return None
    cached = json.loads(record_path.read_text())
    same = (cached.get("overrides") == _full_overrides(overrides, seed, smoke, steps)
            and cached.get("base_config", V8192_CONFIG.name) == base_config.name)
    return cached if same else None


def run_variant(name: str, overrides: list[str], seed: int, out_dir: Path = RESULTS, smoke: bool = False,
                steps: int | None = None, base_config: Path = BASE_CONFIG) -> dict:
    """Train (or reuse) variant `name` with `overrides` at `seed` on `base_config`; returns the run record."""
    cached = cached_record(name, overrides, seed, out_dir, smoke, steps, base_config)
    if cached is not None:
        return cached
    record_path = out_dir / "runs" / f"{name}_s{seed}.json"
    overrides = _full_overrides(overrides, seed, smoke, steps)

    from pipeline.config.run import load_run_config
    from pipeline.model.flops import forward_flops_per_token, param_counts
    from pipeline.train.build import build_trainer

    run_dir = ROOT / "runs" / ("experiments-smoke" if smoke else "experiments") / f"{name}_s{seed}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()                       # resume=never: a rerun starts from scratch
    data = ROOT / yaml.safe_load(base_config.read_text())["data"]["path"]      # relative to the repository
    cfg = load_run_config(base_config, overrides + [f"run_dir={run_dir}", f"data.path={data}"])
    t0 = time.time()
    trainer = build_trainer(cfg)
    trainer.fit()
    val, train = _read_metrics(metrics)
    counts = param_counts(cfg.model)
    record = {
        "name": name, "seed": seed, "base_config": base_config.name, "overrides": overrides,
        "steps": cfg.train.max_steps,
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


def _train_one(job: tuple) -> str:
    """A child process of train_missing: one intra-op thread, so N children use N cores."""
    import torch
    torch.set_num_threads(1)
    name, overrides, seed, out_dir, smoke, steps, base_config = job
    rec = run_variant(name, overrides, seed, out_dir, smoke, steps, base_config)
    return f"{name} seed {seed}: val {rec['final_val_loss']:.4f} in {rec['wall_s']:.0f} s"


def train_missing(runs: list[tuple[str, list[str], int]], out_dir: Path, smoke: bool, jobs: int,
                  steps: int | None = None, base_config: Path = BASE_CONFIG) -> None:
    """Train the (name, overrides, seed) runs that have no stored record, `jobs` at a time in fresh processes
    (spawned: no state shared with this one; each picks its own free rendezvous port). jobs <= 1: nothing
    here, the experiment trains its runs one by one in its own process."""
    todo, seen = [], set()
    for name, overrides, seed in runs:
        if (name, seed) not in seen and cached_record(name, overrides, seed, out_dir, smoke, steps, base_config) is None:
            seen.add((name, seed))
            todo.append((name, list(overrides), seed, out_dir, smoke, steps, base_config))
    if jobs <= 1 or not todo:
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for line in pool.map(_train_one, todo):
            print(line, flush=True)
