"""Readiness check `p5`: bench/gpu_throughput.py (P5) at the battery's size.

OLMoE-1.3B shape, batch 4 x 2048, bf16 autocast, 3 warm-up + 10 timed steps per variant; the OE table keeps
the paper's table / active-parameter ratio (--m ratio) and the trunk is cut until that table fits the GPU
(--n-layers auto: the layers used are in the summary). PASS: both variants ran and every figure is finite;
the OE on/off step-time ratio is reported against the paper's 1.048 (32 x A100), not judged: one GPU holds
the whole table (no row sharding), so the comparison is indicative only.
"""
from __future__ import annotations

import math
from pathlib import Path

from bench.gpu_check import result

ARGS = ["--m", "ratio", "--n-layers", "auto", "--batch", "4", "--seq", "2048", "--steps", "10", "--warmup", "3"]


def run(device: str, smoke: bool, workdir: Path) -> dict:
    from bench.gpu_throughput import measure, parser

    r = measure(parser().parse_args([*ARGS, "--json", str(workdir / "p5.json")]))
    off, on = r["off"], r["on"]
    finite = all(math.isfinite(x) and x > 0 for v in (off, on) for x in (v["tokens_per_s"], v["mfu"]))
    summary = (f"{r['device']}, {r['n_layers']}/12 layers, m={on['m']:,} (table/active {r['table_ratio']:.1f}): "
               f"OE off {off['tokens_per_s']:,.0f} tok/s MFU {off['mfu']:.3f}, OE on {on['tokens_per_s']:,.0f} "
               f"tok/s MFU {on['mfu']:.3f}; step ratio {r['step_time_ratio']:.3f} "
               f"(paper {r['paper_step_time_ratio']:.3f}); peak {on['peak_mem_gib']:.1f} GiB "
               f"(predicted {on['predicted_gib_without_activations']:.1f} w/o activations)")
    return result("PASS" if finite else "FAIL", summary, **r)
