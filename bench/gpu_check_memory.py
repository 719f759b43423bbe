"""Readiness check `memory`: what a trainer run really holds vs pipeline/model/memory.py (the numbers
launch/inspect_model.py prints) for the same model, layout, precision and ZeRO stage.

One fresh process per ZeRO stage (2 and 3: the full-scale configs' layouts; the check's own process for the
first, a subprocess for the next, so one run's leftovers cannot count in another; --cpu-smoke runs ZeRO-2
only, for time) trains 3 steps through build_trainer, bf16, one rank, OE with row_sparse_adam:
  GPU: the OLMoE-1.3B shape cut to 1 layer (D 1024, 64 experts x 512) + OE n=3 k=2 with m = 262,147
       (268M table parameters), seq 512, 2 micro-batches of 1: parameter state ~6.5 GB, activations small.
  CPU (--cpu-smoke): D 128, 2 layers, 8 experts x 128, m = 20,011, seq 64.
Measured "held" = memory after the run minus before it: torch.cuda.memory_allocated on the GPU; on the CPU
the bytes of every distinct tensor storage reachable from Python (gc), which is what the allocator counts
less C++-only temporaries (there are none between steps). Predicted "held" = per_rank_bytes(...)["held"]
+ deepspeed_buffer_bytes (ZeRO-3's reduce bucket from the run's DeepSpeed config). PASS: every stage within
HELD_TOL. The GPU peak (max_memory_allocated) is reported next to the predicted peak: their difference is
the activations, which the model leaves out.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import REPO, result
from bench.gpu_check_data import write_tiny_shards

HELD_TOL = 0.05      # measured on CPU: within 0.1 % at ZeRO 0-3, world 1 and 2 (the rest: small buffers)
STAGES = {"cuda": (2, 3), "cpu": (2,)}   # --cpu-smoke: one stage (time); ZeRO-3 was checked by hand on CPU
SHAPE = {"gpu": ["model=configs/model/olmoe-1.3b-oe12.8m.yaml", "model.n_layers=1", "model.over_encoding.m=262147",
                 "data.seq_len=512", "train.global_batch_size=2", "train.micro_batch_size=1"],
         "cpu": ["model.d_model=128", "model.expert_hidden=128", "model.over_encoding.m=20011", "data.seq_len=64",
                 "train.global_batch_size=4", "train.micro_batch_size=2"]}
COMMON = ["train.max_steps=3", "eval.every=0", "eval.at_end=false", "log.tensorboard=false", "checkpoint.every=0",
          "checkpoint.save_at_end=false", "train.resume=never", "data.verify=size", "deepspeed.precision=bf16",
          "parallel.table_optimizer=row_sparse_adam"]


def live_tensor_bytes() -> int:
    """Bytes of the distinct CPU tensor storages reachable from Python objects."""
    import torch

    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
                st = obj.untyped_storage()
                storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):    # meta / wrapper tensors without a storage
            continue
    return sum(storages.values())


def measure(stage: int, device: str, workdir: Path) -> dict:
    import torch

    from pipeline.config.run import load_run_config
    from pipeline.model.memory import Layout, deepspeed_buffer_bytes, per_rank_bytes
    from pipeline.train.build import build_trainer
    from pipeline.train.deepspeed_config import build_deepspeed_config

    shards = write_tiny_shards(workdir / "shards")
    cfg = load_run_config(REPO / "configs/run/tiny-cpu.yaml",
                          [f"data.path={shards}", f"run_dir={workdir / f'zero{stage}'}", *COMMON,
                           f"deepspeed.zero_stage={stage}", *SHAPE["gpu" if device == "cuda" else "cpu"]])
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else live_tensor_bytes()
    trainer = build_trainer(cfg)
    trainer.fit()
    gc.collect()
    held = (torch.cuda.memory_allocated() if cuda else live_tensor_bytes()) - before
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    buffers = deepspeed_buffer_bytes(stage, build_deepspeed_config(cfg, 1)["zero_optimization"], "bf16")
    pred = per_rank_bytes(cfg.model, Layout(), "bf16", stage, "row_sparse_adam", "dp", tokens, buffers)
    return {"zero_stage": stage, "held_bytes": held, "peak_bytes": peak, "predicted_held_bytes": pred["held"],
            "predicted_peak_bytes_without_activations": pred["total"], "deepspeed_buffer_bytes": buffers,
            "held_ratio": held / pred["held"], "backend": trainer.dist.backend}


def run(device: str, smoke: bool, workdir: Path) -> dict:
    stages = []
    for i, stage in enumerate(STAGES[device]):
        if i == 0:                      # this check's own process is fresh: the first stage runs here
            stages.append(measure(stage, device, workdir))
            continue
        out = workdir / f"zero{stage}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
        log = workdir / f"zero{stage}.log"
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "bench.gpu_check_memory", "--stage", str(stage),
                                   "--device", device, "--workdir", str(workdir), "--out", str(out)],
                                  cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode or not out.is_file():
            return result("FAIL", f"ZeRO-{stage} run exited {proc.returncode} (see {log})", log=str(log),
                          log_tail=log.read_text()[-1500:])
        stages.append(json.loads(out.read_text()))
    ok = all(abs(s["held_ratio"] - 1) <= HELD_TOL for s in stages)
    gib = 2**30
    parts = []
    for s in stages:
        text = (f"ZeRO-{s['zero_stage']} held {s['held_bytes'] / gib:.3f} GiB / predicted "
                f"{s['predicted_held_bytes'] / gib:.3f} ({s['held_ratio']:.3f})")
        if s["peak_bytes"] is not None:
            text += (f", peak {s['peak_bytes'] / gib:.2f} vs "
                     f"{s['predicted_peak_bytes_without_activations'] / gib:.2f} w/o activations")
        parts.append(text)
    return result("PASS" if ok else "FAIL", f"{device}: " + "; ".join(parts) + f" (tol {HELD_TOL:.0%})",
                  stages=stages, held_tol=HELD_TOL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    Path(args.out).write_text(json.dumps(measure(args.stage, args.device, Path(args.workdir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
