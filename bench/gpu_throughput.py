"""P5: single-GPU training throughput of OLMoE-1.3B with and without OE-12.8M (H100 / H200), bf16.

For each variant: tokens/s (median over the timed steps), MFU = training FLOPs/token (pipeline/model/flops.py,
forward + backward, attention included) x tokens/s / peak bf16 dense FLOP/s of the device, and peak GPU memory.
Precision: fp32 master weights, bf16 autocast compute (the usual mixed-precision setup). Optimizers: fused
torch AdamW for the backbone; the OE table uses RowSparseAdam on sparse gradients (only looked-up rows are
touched). On one GPU the 13.1B-parameter OE-12.8M table (52 GB fp32 + 105 GB Adam state) does not fit, so:
  --m auto    the table is made as large as fits after the backbone measured by the OE-off run;
  --m ratio   the table keeps the paper's table / active-parameter ratio (OE-12.8M tables / OLMoE-1.3B active
              parameters, both counted by pipeline/model/flops.py) for the model actually run; with
              --n-layers auto the layers are cut until that table fits (predicted by pipeline/model/memory.py
              plus the OE-off run's measured activations), and the OE-off run is repeated at that depth;
  --m N       m = N.
The m and the number of layers used are printed. The paper's figure (32 x A100, row-sharded table):
1.211 -> 1.155 M tok/s, -4.63 % throughput, i.e. an OE-on / OE-off step-time ratio of 1.048.
Weights are drawn on the device with the model's own init distributions (OLMoE.init_spec) instead of its
CPU counter-based init: the values do not matter for throughput, and drawing a 10B-parameter table block by
block on the CPU would take minutes.

    python bench/gpu_throughput.py [--batch 4 --seq 2048 --steps 20] [--m auto|ratio|12800000]
        [--n-layers auto|N] [--json runs/bench/p5.json]

Needs CUDA; it refuses to run on CPU.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from bench.timing import write_json
from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.model.flops import param_counts, training_flops_per_token
from pipeline.model.init import materialize
from pipeline.model.memory import Layout, per_rank_bytes
from pipeline.parallel.table_optimizers import RowSparseAdam, use_sparse_table_grads

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense bf16 tensor-core FLOP/s (SXM)
TABLE_BYTES_PER_PARAM = 12            # fp32 weight + Adam m and v (the gradient is sparse)
OFF, ON = "configs/model/olmoe-1.3b.yaml", "configs/model/olmoe-1.3b-oe12.8m.yaml"
PAPER_STEP_RATIO = 1.211 / 1.155      # 32 x A100, m = 12.8M


def peak_flops(name: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: add its peak bf16 FLOP/s to PEAK_BF16")


def paper_table_ratio() -> float:
    return param_counts(load_model_config(ON))["oe_tables"] / param_counts(load_model_config(OFF))["active"]


def configs(n_layers: int, m: int | None):
    off = load_model_config(OFF, [f"n_layers={n_layers}"])
    if m is None:
        m = round(paper_table_ratio() * param_counts(off)["active"] / off.d_model)   # tables ~= m x D
    m += (m % off.vocab_size == 0)
    return off, load_model_config(ON, [f"n_layers={n_layers}", f"over_encoding.m={m}"])


def predicted_bytes(cfg, args) -> int:
    """This script's setup is the trainer's bf16 ZeRO-0 rule on one rank (memory.py), activations excluded."""
    return per_rank_bytes(cfg, Layout(), "bf16", 0, "row_sparse_adam", "dp", args.batch * args.seq)["total"]


@torch.no_grad()
def device_init(model, device) -> None:
    materialize(model, device)
    for name, p in model.named_parameters():
        spec = model.init_spec(name, p)
        if spec.kind == "ones":
            p.fill_(1.0)
        else:
            torch.nn.init.trunc_normal_(p, 0.0, spec.std, -3 * spec.std, 3 * spec.std)
    model.reset_buffers()


def run(cfg, args, device) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(cfg, device="meta")
    device_init(model, device)
    use_sparse_table_grads(model)
    build_s = time.perf_counter() - t0
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
    peak = torch.cuda.max_memory_allocated(device)
    result = {"m": cfg.over_encoding.m if cfg.over_encoding.enabled else 0, "n_layers": cfg.n_layers,
              "tokens_per_s": tokens_per_s,
              "mfu": flops * tokens_per_s / peak_flops(torch.cuda.get_device_name(device)),
              "peak_mem_gib": peak / 2**30, "predicted_gib_without_activations": predicted_bytes(cfg, args) / 2**30,
              "step_ms_median": statistics.median(times) * 1e3, "build_s": build_s,
              "params_total": param_counts(cfg)["total"], "params_active": param_counts(cfg)["active"],
              "params_oe_tables": param_counts(cfg)["oe_tables"]}
    del model, opts, tables, dense
    gc.collect()
    return result


def fit_layers(args, device, total: int) -> tuple[int, dict]:
    """--m ratio with --n-layers auto: the deepest model whose ratio-scaled table fits (returns its OE-off run)."""
    layers = load_model_config(OFF).n_layers
    off = run(configs(layers, None)[0], args, device)
    activations = off["peak_mem_gib"] * 2**30 - predicted_bytes(configs(layers, None)[0], args)
    budget = total - activations - args.headroom_gib * 2**30   # activations shrink with depth: conservative
    fit = next((n for n in range(layers, 0, -1) if predicted_bytes(configs(n, None)[1], args) <= budget), 1)
    if fit != layers:
        off = run(configs(fit, None)[0], args, device)
    return fit, off


def measure(args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU (H100/H200); none is visible")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory
    if args.m == "ratio" and args.n_layers == "auto":
        n_layers, off = fit_layers(args, device, total)
    else:
        n_layers = load_model_config(OFF).n_layers if args.n_layers == "auto" else int(args.n_layers)
        off = run(configs(n_layers, None)[0], args, device)
    if args.m == "ratio":
        on_cfg = configs(n_layers, None)[1]
    else:
        if args.m == "auto":
            spare = total - off["peak_mem_gib"] * 2**30 - args.headroom_gib * 2**30
            m = min(12_800_000, int(spare / TABLE_BYTES_PER_PARAM / configs(n_layers, 0)[0].d_model))
        else:
            m = int(args.m)
        on_cfg = configs(n_layers, m)[1]
    on = run(on_cfg, args, device)
    return {"bench": "P5_gpu_throughput", "device": name, "args": vars(args), "n_layers": n_layers,
            "paper_table_ratio": paper_table_ratio(), "table_ratio": on["params_oe_tables"] / off["params_active"],
            "off": off, "on": on, "ratio": on["tokens_per_s"] / off["tokens_per_s"],
            "step_time_ratio": on["step_ms_median"] / off["step_ms_median"], "paper_step_time_ratio": PAPER_STEP_RATIO}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--m", default="auto", help="OE base table rows: auto (as large as fits, <= 12.8M), ratio "
                                                "(the paper's table/active ratio) or a number")
    ap.add_argument("--n-layers", default="auto", help="trunk layers: auto (12; with --m ratio: cut to fit) or N")
    ap.add_argument("--headroom-gib", type=float, default=6.0, help="kept free for fragmentation / spikes")
    ap.add_argument("--json", default=None)
    return ap


def main(argv: list[str] | None = None) -> None:
    record = measure(parser().parse_args(argv))
    off, on, a = record["off"], record["on"], record["args"]
    print(f"P5: {record['device']}, OLMoE-1.3B shape (configs/model/olmoe-1.3b.yaml) with {record['n_layers']} "
          f"layers, bf16 autocast, batch {a['batch']}x{a['seq']}")
    print(f"{'variant':<22}{'tok/s':>10}{'MFU':>8}{'peak GiB':>10}{'step ms':>9}")
    for label, r in (("OE off", off), (f"OE m={on['m']:,}", on)):
        print(f"{label:<22}{r['tokens_per_s']:>10.0f}{r['mfu']:>8.3f}{r['peak_mem_gib']:>10.1f}"
              f"{r['step_ms_median']:>9.1f}")
    print(f"OE table / active parameters: {record['table_ratio']:.1f} "
          f"(paper's OE-12.8M: {record['paper_table_ratio']:.1f})")
    print(f"throughput OE-on / OE-off: {record['ratio']:.3f}; step time OE-on / OE-off: "
          f"{record['step_time_ratio']:.3f} (paper, 32xA100, m=12.8M: {PAPER_STEP_RATIO:.3f})")
    write_json(a["json"], record)


if __name__ == "__main__":
    main()
