"""Readiness check `ep2` (2+ GPUs): 2 ranks with ZeRO-2 + ep=2 + row-sharded OE (row_sparse_adam) on nccl
give the per-step losses of one process, through launch/train.py (torchrun for the 2 ranks, plain python
for the one process), in fp32 and in bf16.

Model and data: configs/run/tiny-cpu.yaml (tiny OLMoE + OE + MTP) on the battery's synthetic shards, global
batch 4. Tolerances (relative, per step):
- fp32, 8 steps: 1e-4. The CPU twin of this test (tests/pipeline/train/test_parallel_training.py, gloo)
  holds 1e-5; on GPUs the two runs also differ in kernel summation order (atomics, GEMM tiling), the same
  margin as bench/gpu_check_training.py's fp32 GPU-vs-CPU comparison.
- bf16, 20 steps: 0.5 u (u = 2^-9, bf16's unit roundoff), the bound tests/pipeline/train/test_bf16.py
  derives for bf16 multi-rank vs bf16 one process: the all-to-all carries operands already in the matmul
  dtype, so the runs differ only by fp32 summation order, which flips the bf16 rounding of the few weights
  on a rounding boundary.
The check also runs on CPU with gloo (`python -m bench.gpu_check --child ep2 --cpu-smoke ...`), which is how
it was tried here; the battery runs it only with 2+ GPUs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import REPO, result
from bench.gpu_check_data import write_tiny_shards

U = 2.0 ** -9
RUNS = {"fp32": (8, 1e-4), "bf16": (20, 0.5 * U)}      # precision -> (steps, relative tolerance)
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "log.every=1", "checkpoint.every=0",
         "checkpoint.save_at_end=false", "train.resume=never", "data.verify=size", "deepspeed.zero_stage=2",
         "parallel.table_optimizer=row_sparse_adam"]


def free_port() -> int:
    from pipeline.train.distributed import free_port as port
    return port()


def train(world: int, run_dir: Path, shards: Path, precision: str, steps: int, log: Path) -> dict[int, float]:
    args = ["--config", "configs/run/tiny-cpu.yaml", f"data.path={shards}", f"run_dir={run_dir}", *QUIET,
            f"deepspeed.precision={precision}", f"train.max_steps={steps}"]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "launch/train.py", *args, "parallel.ep=2"]
    else:
        cmd = [sys.executable, "launch/train.py", *args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}: {log.read_text()[-800:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def run(device: str, smoke: bool, workdir: Path) -> dict:
    shards = write_tiny_shards(workdir / "shards")
    numbers: dict = {"tolerance_rel": {p: tol for p, (_, tol) in RUNS.items()}}
    ok, parts = True, []
    for precision, (steps, tol) in RUNS.items():
        two = train(2, workdir / f"ep2_{precision}", shards, precision, steps, workdir / f"ep2_{precision}.log")
        one = train(1, workdir / f"one_{precision}", shards, precision, steps, workdir / f"one_{precision}.log")
        rel = [abs(two[s] - one[s]) / abs(one[s]) for s in sorted(one)]
        passed = len(rel) == steps == len(two) and max(rel) <= tol
        ok &= passed
        numbers[precision] = {"steps": steps, "two_ranks": two, "one_process": one, "max_rel": max(rel),
                              "passed": passed}
        parts.append(f"{precision} {steps} steps max rel {max(rel):.1e} (tol {tol:.1e})")
    return result("PASS" if ok else "FAIL", f"{device}: 2 ranks ZeRO-2+ep2+sharded OE vs 1 process: "
                  + "; ".join(parts), **numbers)
