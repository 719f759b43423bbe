"""Shared helpers for training tests: tiny shard folders, tiny run configs, in-process and subprocess runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.config.run import RunConfig, load_run_config
from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

TINY_RUN = REPO / "configs" / "run" / "tiny-cpu.yaml"
VOCAB, EOS = 512, 511


def make_shards(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        write_shard_folder(folder, {"train": random_documents(300, VOCAB, EOS, seed=1, distinct=24),
                                    "val": random_documents(40, VOCAB, EOS, seed=2, distinct=24)}, VOCAB, EOS)
    return folder


def tiny_config(shards: str | Path, run_dir: str | Path, *overrides: str) -> RunConfig:
    return load_run_config(TINY_RUN, [f"data.path={shards}", f"run_dir={run_dir}", *overrides])


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_losses(run_dir: str | Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def train_in_process(shards, run_dir, *overrides) -> dict[int, float]:
    """Run a tiny training in this (already distributed) process; rank 0 returns {step: loss}."""
    from pipeline.train.build import build_trainer

    cfg = tiny_config(shards, run_dir, *overrides)
    trainer = build_trainer(cfg)
    trainer.fit()
    return step_losses(run_dir) if trainer.dist.rank == 0 else {}


def launch(args: list[str], world_size: int = 1, timeout: float = 240, launcher: str = "torchrun",
           check: bool = True) -> subprocess.CompletedProcess:
    """Run launch/train.py in fresh processes: `python` (1 rank), `torchrun` or `deepspeed`."""
    env = rank_env(0, world_size, free_port())
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the launcher (or train.py itself) sets these
    script = str(REPO / "launch" / "train.py")
    if launcher == "python":
        cmd = [sys.executable, script]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_accelerators", str(world_size),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script]
    proc = subprocess.run(cmd + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd + args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


__all__ = ["launch", "make_shards", "read_metrics", "step_losses", "tiny_config", "train_in_process"]
