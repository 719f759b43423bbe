"""P5: single-GPU training throughput of OLMoE-1.3B with and without OE-12.8M (H100 / H200), bf16.

For each variant: tokens/s (median over the timed steps), MFU = training FLOPs/token (pipeline/model/flops.py,
forward + backward, attention included) x tokens/s / peak bf16 dense FLOP/s of the device, and peak GPU memory.
Precision: fp32 master weights, bf16 autocast compute (the usual mixed-precision setup). Optimizers: fused
torch AdamW for the backbone; the OE table uses RowSparseAdam on sparse gradients (only looked-up rows are
touched). On one GPU the 13.1B-parameter OE-12.8M table (52 GB fp32 + 105 GB Adam state) does not fit, so the
table is made as large as fits (--m auto: m from the memory left after the backbone measured by the OE-off run);
the m actually used is printed. The paper's figure (32 x A100, row-sharded table): 1.211 -> 1.155 M tok/s,
-4.63 %.

    python bench/gpu_throughput.py [--batch 4 --seq 2048 --steps 20] [--m auto|12800000]
        [--json runs/bench/p5.json]

Needs CUDA; it refuses to run on CPU.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.timing import write_json
from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.model.flops import training_flops_per_token
from pipeline.parallel.table_optimizers import RowSparseAdam, use_sparse_table_grads

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense bf16 tensor-core FLOP/s (SXM)
TABLE_BYTES_PER_PARAM = 12            # fp32 weight + Adam m and v (the gradient is sparse)


def peak_flops(name: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: add its peak bf16 FLOP/s to PEAK_BF16")


def run(cfg, args, device) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build_model(cfg, device=device)
    use_sparse_table_grads(model)
    tables = [p for p in model.parameters() if getattr(p, "_oe_table", False)]
    dense = [p for p in model.parameters() if not getattr(p, "_oe_table", False)]
    opts = [torch.optim.AdamW(dense, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)]
    if tables:
        opts.append(RowSparseAdam(tables, lr=1e-4, betas=(0.9, 0.95)))
    g = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device, generator=g)
               for _ in range(4)]
    times = []
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batches[step % len(batches)]).loss
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    tokens_per_s = args.batch * args.seq / statistics.median(times)
    flops = training_flops_per_token(cfg, args.seq)
    result = {"m": cfg.over_encoding.m if cfg.over_encoding.enabled else 0, "tokens_per_s": tokens_per_s,
              "mfu": flops * tokens_per_s / peak_flops(torch.cuda.get_device_name(device)),
              "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
              "step_ms_median": statistics.median(times) * 1e3}
    del model, opts, tables, dense
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--m", default="auto", help="OE base table rows, or auto (as large as fits, <= 12.8M)")
    ap.add_argument("--headroom-gib", type=float, default=6.0, help="kept free for fragmentation / spikes")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU (H100/H200); none is visible")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    base = load_model_config("configs/model/olmoe-1.3b.yaml")
    off = run(base, args, device)
    if args.m == "auto":
        total = torch.cuda.get_device_properties(device).total_memory
        spare = total - off["peak_mem_gib"] * 2**30 - args.headroom_gib * 2**30
        m = min(12_800_000, int(spare / TABLE_BYTES_PER_PARAM / base.d_model))
    else:
        m = int(args.m)
    m += (m % base.vocab_size == 0)
    on = run(load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", [f"over_encoding.m={m}"]), args, device)
    print(f"P5: {name}, OLMoE-1.3B (configs/model/olmoe-1.3b.yaml), bf16 autocast, batch {args.batch}x{args.seq}")
    print(f"{'variant':<22}{'tok/s':>10}{'MFU':>8}{'peak GiB':>10}{'step ms':>9}")
    for label, r in (("OE off", off), (f"OE m={m:,}", on)):
        print(f"{label:<22}{r['tokens_per_s']:>10.0f}{r['mfu']:>8.3f}{r['peak_mem_gib']:>10.1f}{r['step_ms_median']:>9.1f}")
    print(f"throughput OE-on / OE-off: {on['tokens_per_s'] / off['tokens_per_s']:.3f} (paper, 32xA100, m=12.8M: 0.954)")
    write_json(args.json, {"bench": "P5_gpu_throughput", "device": name, "args": vars(args), "off": off, "on": on,
                           "ratio": on["tokens_per_s"] / off["tokens_per_s"]})


if __name__ == "__main__":
    main()
