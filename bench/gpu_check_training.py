"""Readiness check `train`: the real trainer on the device, bf16 and fp32, against fp32 on the CPU.

Model and run: configs/run/tiny-cpu.yaml (tiny-olmoe-ot: 2-layer OLMoE, 8 experts top-2, OE n=3 k=2 + MTP-DS
depth 1) on the battery's synthetic shards, ZeRO-2 + row_sparse_adam (the full-scale configs' choice), built
with pipeline.train.build.build_trainer in this process (nccl on a GPU, gloo in --cpu-smoke).
1. bf16 (deepspeed.precision=bf16) for STEPS steps: every loss finite, and the mean of the last 5 below
   FALL_RATIO x the mean of the first 5 (the synthetic documents use 24 distinct tokens: the fp32 CPU run
   falls from 6.9 to 3.7 in 30 steps, measured).
2. fp32 on the device for the first K steps vs the same run on the CPU (a subprocess with no GPU visible):
   per-step relative difference of the loss AND of the pre-clip global gradient norm <= FP32_TOL (the loss
   alone barely sees precision at initialisation: near-uniform logits give ~ln V whatever the rounding; the
   gradient norm sees it at once). TF32 is switched off for this comparison (TF32 matmuls
   keep a 10-bit mantissa, ~5e-4 relative error per product: an fp32 comparison would then measure TF32).
   Why 1e-4 over 5 steps: both sides are IEEE fp32 (unit roundoff 6e-8) and differ only in summation order
   (GEMM tiling, atomics in index_add_, SDPA kernels), which changes step-1 losses by ~1e-6 relative; after
   each AdamW step, elements whose gradient is ~0 can flip the sign of their normalised update (O(lr)) and a
   near-tied top-k choice can flip, and the CPU multi-rank tests of the same model (same effect: another
   summation order) see up to 1e-5 in losses and gradient norms over 8-10 steps. 1e-4 leaves 10x over that,
   and stays well below what bf16 gives (unit roundoff 3.9e-3; the bf16 run's own distance to the CPU fp32
   run is reported next to it as the negative control and must exceed the tolerance, or the comparison could
   not tell bf16 from fp32: measured on CPU, 2.8e-4 at step 1 and 1.1e-2 by step 4, in the gradient norm).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import REPO, result
from bench.gpu_check_data import write_tiny_shards

STEPS = 30
K = 5                   # steps compared fp32 device vs fp32 CPU
FP32_TOL = 1e-4         # relative, per step (module docstring)
FALL_RATIO = 0.8
TINY_RUN = REPO / "configs" / "run" / "tiny-cpu.yaml"
COMMON = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "log.every=1", "checkpoint.every=0",
          "checkpoint.save_at_end=false", "train.resume=never", "data.verify=size", f"train.max_steps={STEPS}",
          "deepspeed.zero_stage=2", "parallel.table_optimizer=row_sparse_adam"]


def exact_fp32() -> None:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def train(shards: Path, run_dir: Path, *overrides: str) -> tuple[dict[str, list[float]], dict]:
    """One run through build_trainer in this process; per-step losses and gradient norms (metrics.jsonl)."""
    from pipeline.config.run import load_run_config
    from pipeline.train.build import build_trainer

    cfg = load_run_config(TINY_RUN, [f"data.path={shards}", f"run_dir={run_dir}", *COMMON, *overrides])
    trainer = build_trainer(cfg)
    trainer.fit()
    param = next(trainer.engine.module.parameters())
    info = {"backend": trainer.dist.backend, "device": str(param.device), "param_dtype": str(param.dtype)}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    return {"loss": [r["loss"] for r in steps], "grad_norm": [r["grad_norm"] for r in steps]}, info


def start_cpu_reference(shards: Path, workdir: Path) -> tuple[subprocess.Popen, Path]:
    out = workdir / "cpu_reference.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(min(4, os.cpu_count() or 1))})
    cmd = [sys.executable, "-m", "bench.gpu_check_training", "--reference", str(out), "--shards", str(shards),
           "--run-dir", str(workdir / "cpu_fp32")]
    log = open(workdir / "cpu_reference.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), out


def rel_diffs(a: dict[str, list[float]], b: dict[str, list[float]]) -> list[float]:
    """Per step: the larger relative difference of loss and gradient norm (first K steps)."""
    return [max(abs(x - y) / abs(y) for x, y in ((a[key][i], b[key][i]) for key in ("loss", "grad_norm")))
            for i in range(min(K, len(a["loss"]), len(b["loss"])))]


def run(device: str, smoke: bool, workdir: Path) -> dict:
    shards = write_tiny_shards(workdir / "shards")
    ref_proc, ref_out = start_cpu_reference(shards, workdir)   # runs while the device trains
    if device == "cuda":
        exact_fp32()   # before any GEMM; autocast's bf16 matmuls are unaffected
    bf16, info = train(shards, workdir / "bf16", "deepspeed.precision=bf16")
    fp32, info32 = train(shards, workdir / "fp32", "deepspeed.precision=fp32", f"train.hard_stop_step={K}")
    ref_proc.wait(timeout=300)
    if not ref_out.is_file():
        return result("FAIL", "the CPU fp32 reference run failed (see cpu_reference.log)",
                      log=str(workdir / "cpu_reference.log"))
    cpu = json.loads(ref_out.read_text())["steps"]
    losses = bf16["loss"]
    finite = len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    falling = finite and last < FALL_RATIO * first
    d32 = rel_diffs(fp32, cpu)
    d16 = rel_diffs(bf16, cpu)
    matches = len(d32) == K and max(d32) <= FP32_TOL
    control = max(d16) > FP32_TOL
    expected_backend = "gloo" if device == "cpu" else "nccl"
    ok = falling and matches and control and info["backend"] == expected_backend
    trend = "falling" if falling else "NOT falling"
    summary = (f"{info['backend']} bf16 {STEPS} steps {first:.3f}->{last:.3f} ({trend}); "
               f"fp32 {info32['device']} vs cpu (loss, gnorm) max rel {max(d32):.1e} (tol {FP32_TOL:.0e}); "
               f"bf16 vs cpu fp32 {max(d16):.1e} (control, must exceed tol)")
    return result("PASS" if ok else "FAIL", summary, backend=info["backend"], device=info["device"],
                  param_dtype_bf16_run=info["param_dtype"], steps=STEPS, bf16=bf16, fp32=fp32, cpu_fp32=cpu,
                  fp32_vs_cpu_rel=d32, bf16_vs_cpu_rel=d16, fp32_tol=FP32_TOL,
                  first5_mean=first, last5_mean=last, fall_ratio=FALL_RATIO, finite=finite, falling=falling,
                  tf32_disabled=device == "cuda")


def reference_main(argv: list[str] | None = None) -> int:
    """The CPU fp32 side of the comparison (a fresh process without a visible GPU)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args(argv)
    steps, info = train(Path(args.shards), Path(args.run_dir), "deepspeed.precision=fp32",
                        f"train.hard_stop_step={K}")
    Path(args.reference).write_text(json.dumps({"steps": steps, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(reference_main())
