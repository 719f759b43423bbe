"""P1: training-step time with Over-Encoding on / off on CPU (forward + backward + optimizer step).

Same backbone, same batch; only `over_encoding.enabled` differs. Variants are interleaved (off, on/..., off,
...) and each figure is the median over --reps steps (see bench/timing.py), so the ratios hold on a shared
machine; the process CPU time (1 thread) is the primary figure, wall time is shown next to it. Table-optimizer variants for the OE table (the backbone always uses torch AdamW):
  adamw              dense AdamW on the whole table (every row, every step; paper-faithful dynamics)
  row_sparse         RowSparseAdam on the dense gradient the plain embedding backward produces
  row_sparse+sparse  RowSparseAdam on a sparse (rows, values) gradient: the step touches only looked-up rows
  ...+ckpt           the same with model.activation_checkpointing (off+ckpt: OE off, checkpointed)
Settings: m = 1M, and "12.8M-scaled": m chosen so that table parameters / active backbone parameters equal
the paper's OLMoE-1.3B + OE-12.8M ratio (13.1B / 0.26B ~ 50x), capped by --max-table-gib.

    DS_ACCELERATOR=cpu .venv/bin/python bench/oe_step_time.py [--reps 7] [--json runs/bench/p1.json]
"""
from __future__ import annotations

import argparse
import gc
from dataclasses import replace
import os
from typing import TYPE_CHECKING

from bench.timing import interleaved, load_average, median, spread, write_json

if TYPE_CHECKING:
    import torch

# A CPU-sized OLMoE with the real 50k vocabulary (so the 2/3-gram ids spread like in the paper).
SHAPE = ["d_model=256", "n_layers=4", "n_heads=4", "n_experts=16", "top_k=4", "expert_hidden=128"]
PAPER_TABLE_OVER_ACTIVE = 13.1e9 / 0.26e9   # OE-12.8M table params / OLMoE-1.3B active params


def active_params(cfg) -> int:
    """Parameters a token's compute touches: head + attention + router + top_k experts (not embeddings)."""
    d, h = cfg.d_model, cfg.expert_hidden
    per_layer = 4 * d * d + d * cfg.n_experts + cfg.top_k * 3 * d * h
    return cfg.padded_vocab_size * d + cfg.n_layers * per_layer


def make_step(cfg, table_opt: str | None, sparse: bool, batch: torch.Tensor):
    import torch

    from pipeline.model import build_model
    from pipeline.parallel.table_optimizers import build_table_optimizer

    torch.manual_seed(0)
    model = build_model(cfg)
    if sparse:
        from pipeline.parallel.table_optimizers import use_sparse_table_grads
        use_sparse_table_grads(model)
    tables = [p for p in model.parameters() if getattr(p, "_oe_table", False)]
    dense = [p for p in model.parameters() if not getattr(p, "_oe_table", False)]
    opts = [torch.optim.AdamW(dense, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)]
    if tables:
        opts.append(build_table_optimizer(table_opt, tables, lr=1e-3))

    def step() -> None:
        model(batch).loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    return step


def run_setting(label: str, m: int, kinds: list[str], args) -> dict:
    import torch

    from pipeline.config.model import load_model_config
    from pipeline.model.over_encoding import ngram_table_ids

    base = load_model_config("configs/model/olmoe-1.3b.yaml", SHAPE)
    on = load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", SHAPE + [f"over_encoding.m={m}"])
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, base.vocab_size, (args.batch, args.seq), generator=g)
    variants = {"off": make_step(base, None, False, batch)}
    for kind in kinds:          # "<table optimizer>[+sparse][+ckpt]"; "off+ckpt" = OE off, checkpointed
        opt, *flags = kind.split("+")
        model_cfg = on
        if "ckpt" in flags:
            model_cfg = replace(base if opt == "off" else on, activation_checkpointing=True)
        table_opt = {"off": None, "adamw": "adamw", "row_sparse": "row_sparse_adam"}[opt]
        variants[kind] = make_step(model_cfg, table_opt, "sparse" in flags, batch)
    oe = on.over_encoding
    variants["ids_only"] = lambda: ngram_table_ids(batch, on.vocab_size, oe.n, oe.k, oe.m)
    load0 = load_average()
    wall, cpu = interleaved(variants, args.reps, warmup=1)
    load1 = load_average()
    rows = {name: {"cpu_ms": median(cpu[name]) * 1e3, "cpu_ratio": median(cpu[name]) / median(cpu["off"]),
                   "cpu_spread": spread(cpu[name]), "wall_ms": median(wall[name]) * 1e3,
                   "wall_ratio": median(wall[name]) / median(wall["off"]), "wall_spread": spread(wall[name])}
            for name in variants}
    table_params = sum(on.over_encoding.moduli()) * (on.d_model // oe.num_tables)
    print(f"\n[{label}] m={m:,}  table params {table_params / 1e6:.0f}M ({table_params * 4 / 2**30:.2f} GiB fp32, "
          f"{table_params / active_params(base):.0f}x active), batch {args.batch}x{args.seq}, threads "
          f"{torch.get_num_threads()}, {args.reps} interleaved reps, load avg {load0:.1f} -> {load1:.1f}")
    print(f"{'variant':<20}{'CPU ms':>9}{'spread':>8}{'/ off':>8}{'wall ms':>10}{'spread':>8}{'/ off':>8}")
    for name, r in rows.items():
        print(f"{name:<20}{r['cpu_ms']:>9.1f}{r['cpu_spread']:>8.2f}{r['cpu_ratio']:>8.3f}"
              f"{r['wall_ms']:>10.1f}{r['wall_spread']:>8.2f}{r['wall_ratio']:>8.3f}")
    del variants
    gc.collect()
    return {"m": m, "table_params": table_params, "load": [load0, load1], "variants": rows}


def main() -> None:
    # Spinning OpenMP threads stall badly on a busy CPU; must be set before torch loads (imported below).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from pipeline.config.model import load_model_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="1: no OpenMP barrier stalls under foreign load")
    ap.add_argument("--variants", nargs="+", default=["adamw", "row_sparse", "row_sparse+sparse"])
    ap.add_argument("--scaled-variants", nargs="+", default=["row_sparse", "row_sparse+sparse"],
                    help="the scaled table is too large to hold dense AdamW next to the others in 24 GiB")
    ap.add_argument("--settings", nargs="+", default=["1M", "scaled"], choices=["1M", "scaled"])
    ap.add_argument("--max-table-gib", type=float, default=2.0, help="cap for the scaled table (fp32)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model_config("configs/model/olmoe-1.3b.yaml", SHAPE)
    scaled = int(PAPER_TABLE_OVER_ACTIVE * active_params(base) / base.d_model)
    scaled = min(scaled, int(args.max_table_gib * 2**30 / 4 / base.d_model))
    scaled += (scaled % base.vocab_size == 0)          # a modulus multiple of V is rejected by the config
    print(f"P1: OE-on / OE-off training step (fwd+bwd+optimizer), backbone {' '.join(SHAPE)}, "
          f"V={base.vocab_size}, active params {active_params(base) / 1e6:.1f}M")
    record = {"bench": "P1_oe_step_time", "shape": SHAPE, "batch": [args.batch, args.seq], "settings": {}}
    for label in args.settings:
        m = 1_000_000 if label == "1M" else scaled
        kinds = args.variants if label == "1M" else args.scaled_variants
        record["settings"][label] = run_setting(label, m, kinds, args)
    write_json(args.json, record)


if __name__ == "__main__":
    main()
