"""Parameter / FLOP / memory inspector for a model config or a run config.

    python launch/inspect_model.py --config configs/model/olmoe-7b-oe12.8m.yaml [--json] [--layout dp=32,ep=8]
        [--param-dtype bf16|fp32|bf16-master-weights] [--zero 0-3] [--seq-len 4096] [-o key=value ...]
    python launch/inspect_model.py --run-config configs/run/olmoe-7b-oe12.8m-ep8.yaml --world 8 [--json]

Builds the model on the meta device (no memory), checks the analytic counts of pipeline.model.flops
against the real parameter tensors, and prints parameters, forward FLOPs per token and, with --layout or
--run-config, per-GPU bytes of parameters, gradients and optimizer state (pipeline/model/memory.py: the
precision rule per parameter kind, activations excluded). --config accepts a model YAML or a run YAML (its
`model:` section only; -o overrides model keys). --run-config reads the whole run: tp / ep, ZeRO stage,
precision, table optimizer and batch from the config, dp = --world / tp (or --layout), checked with the
trainer's own layout checks; -o then overrides run keys (model.n_layers=13, deepspeed.zero_stage=3).
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.model.flops import (attention_flops_per_token, forward_flops_per_token,
                                  param_counts, training_flops_per_token)
from pipeline.model.memory import (PRECISION_RULES, TERM_NAMES, Layout, deepspeed_buffer_bytes, memory_breakdown,
                                   per_rank_bytes)


def meta_counts(model) -> dict[str, int]:
    """Counts taken from the real parameter tensors (meta device), by name and attribute."""
    out = {"total": 0, "oe_tables": 0, "oe_projections": 0, "embedding_padded": 0, "experts": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        out["total"] += n
        if getattr(p, "_oe_table", False):
            out["oe_tables"] += n
        elif name == "over_encoding.proj.weight":
            out["oe_projections"] += n
        elif name == "embed.weight":
            out["embedding_padded"] += n
        elif getattr(p, "_moe_expert", False):
            out["experts"] += n
    return out


def inspect_config(cfg, layout: Layout | None = None, param_dtype: str = "bf16", zero_stage: int = 1,
                   seq_len: int | None = None, table_optimizer: str = "adamw", oe_shard_group: str = "dp",
                   tokens_per_rank_step: int | None = None, zero_config: dict | None = None) -> dict:
    """`zero_config`: the DeepSpeed JSON's zero_optimization section (sizes ZeRO-3's fixed reduce bucket;
    None: DeepSpeed's defaults)."""
    counts = param_counts(cfg)
    model = build_model(cfg, device="meta")
    real = meta_counts(model)
    for key, value in real.items():
        if counts[key] != value:
            raise RuntimeError(f"analytic {key}={counts[key]} disagrees with the built model ({value})")
    seq = seq_len or cfg.max_seq_len
    report = {
        "name": cfg.name,
        "note": cfg.note,
        "params_total": counts["total"],
        "params_active": counts["active"],
        "params_embedding": counts["embedding"],
        "params_embedding_padded": counts["embedding_padded"],
        "params_embedding_with_oe": counts["embedding_with_oe"],
        "params_over_encoding": counts["over_encoding"],
        "params_oe_tables": counts["oe_tables"],
        "params_oe_projections": counts["oe_projections"],
        "params_over_decoding": counts["over_decoding"],
        "params_experts": counts["experts"],
        "flops_per_token": forward_flops_per_token(cfg),
        "attention_flops_per_token": attention_flops_per_token(cfg, seq),
        "training_flops_per_token": training_flops_per_token(cfg, seq),
        "seq_len": seq,
    }
    if layout is not None:
        memory = (cfg, layout, param_dtype, zero_stage, table_optimizer, oe_shard_group, tokens_per_rank_step)
        report["layout"] = {"dp": layout.dp, "tp": layout.tp, "ep": layout.ep, "param_dtype": param_dtype,
                            "zero_stage": zero_stage, "table_optimizer": table_optimizer,
                            "oe_shard_group": oe_shard_group, "tokens_per_rank_step": tokens_per_rank_step}
        buffers = deepspeed_buffer_bytes(zero_stage, zero_config, param_dtype)
        report["per_rank_bytes"] = per_rank_bytes(*memory, buffer_bytes=buffers)
        report["memory_by_kind"] = memory_breakdown(*memory)
    return report


def inspect_run_config(path: str, overrides: list[str], world: int | None, layout: Layout | None,
                       param_dtype: str | None = None, zero_stage: int | None = None) -> dict:
    """The run's layout (tp, ep from `parallel:`, dp = world / tp), precision, ZeRO stage and batch."""
    from pipeline.config.run import load_run_config
    from pipeline.train.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps
    from pipeline.train.parallel_run import check_run_layout

    try:
        cfg = load_run_config(path, overrides)
    except ConfigError as e:
        if not str(e).startswith("data.path"):
            raise
        cfg = load_run_config(path, [*overrides, "data.path=(not read by inspect)"])  # inspect reads no data
    par = cfg.parallel
    if layout is not None:
        if (layout.tp, layout.ep) != (par.tp, par.ep):
            raise ConfigError(f"--layout: tp={layout.tp} ep={layout.ep} disagree with the run config's "
                              f"parallel.tp={par.tp} parallel.ep={par.ep} (override those with -o instead)")
        world = world or layout.dp * layout.tp
        if world != layout.dp * layout.tp:
            raise ConfigError(f"--world {world} disagrees with --layout dp x tp = {layout.dp * layout.tp}")
    if world is None:
        raise ConfigError("--run-config needs --world N (the number of GPUs) or --layout dp=...")
    check_run_layout(cfg, world)                       # the trainer's own layout checks, one line each
    dp = world // par.tp
    accum = gradient_accumulation_steps(cfg, dp)       # global batch must tile micro batch x dp
    zero_config = build_deepspeed_config(cfg, dp)["zero_optimization"]   # the user JSON merged, as in training
    precision = param_dtype or cfg.deepspeed.precision
    zero = cfg.deepspeed.zero_stage if zero_stage is None else zero_stage
    tokens = cfg.train.global_batch_size * cfg.data.seq_len // dp
    report = inspect_config(cfg.model, Layout(dp=dp, tp=par.tp, ep=par.ep), precision, zero, cfg.data.seq_len,
                            par.table_optimizer, par.oe_shard_group, tokens, zero_config)
    report["run"] = {"config": str(path), "world": world, "micro_batch_size": cfg.train.micro_batch_size,
                     "global_batch_size": cfg.train.global_batch_size, "gradient_accumulation_steps": accum,
                     "seq_len": cfg.data.seq_len}
    return report


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


def print_memory(r: dict) -> None:
    lay = r["layout"]
    run = r.get("run")
    where = f"{run['config']} on {run['world']} GPUs: " if run else ""
    print(f"per GPU, {where}dp={lay['dp']} tp={lay['tp']} ep={lay['ep']}, precision {lay['param_dtype']}, "
          f"ZeRO-{lay['zero_stage']}, OE table optimizer {lay['table_optimizer']} (activations excluded):")
    if run:
        print(f"  micro batch {run['micro_batch_size']} x {run['seq_len']}, gradient accumulation "
              f"{run['gradient_accumulation_steps']}, {lay['tokens_per_rank_step']:,} tokens per GPU per step")
    terms = [t for t in TERM_NAMES if any(k["bytes_per_param"][t] for k in r["memory_by_kind"].values())]
    print(f"  {'bytes per parameter':<30}{'params/GPU':>11}" + "".join(f"{t:>12}" for t in terms)
          + f"{'held':>8}{'peak':>8}{'held GiB':>10}{'peak GiB':>10}")
    for kind, k in r["memory_by_kind"].items():
        per = k["bytes_per_param"]
        held, peak = k["held_bytes"] / k["params"], k["peak_bytes"] / k["params"]
        print(f"  {kind + ' (' + k['placement'] + ')':<30}{_human(k['params']):>11}"
              + "".join(f"{per[t]:>12.3f}" for t in terms)
              + f"{held:>8.2f}{peak:>8.2f}{k['held_bytes'] / 2**30:>10.2f}{k['peak_bytes'] / 2**30:>10.2f}")
    tables = r["memory_by_kind"].get("oe_tables")
    if tables and tables["sparse_grad_bytes"] is not None:
        print(f"  (OE table peak includes the sparse gradient bound: {tables['sparse_grad_bytes'] / 2**30:.2f} GiB)")
    b = r["per_rank_bytes"]
    if b["deepspeed_buffers"]:
        print(f"  {'DeepSpeed fixed buffers':<30} {b['deepspeed_buffers'] / 2**30:.2f} GiB (ZeRO-3 reduce bucket)")
    print(f"  {'total held / peak':<30} {b['held'] / 2**30:.2f} / {b['total'] / 2**30:.2f} GiB")
    print(f"  {'start-up peak':<30} {b['startup_peak'] / 2**30:.2f} GiB (own shards only, init in blocks)")


def print_report(r: dict) -> None:
    print(f"model {r['name']}" + (f"  ({r['note']})" if r["note"] else ""))
    rows = [("total parameters", r["params_total"]), ("active parameters", r["params_active"]),
            ("1-gram embedding (vocab rows)", r["params_embedding"]),
            ("1-gram embedding (padded)", r["params_embedding_padded"]),
            ("OE tables", r["params_oe_tables"]), ("OE projections", r["params_oe_projections"]),
            ("embedding + OE tables (Table 1)", r["params_embedding_with_oe"]),
            ("over-decoding modules", r["params_over_decoding"]), ("expert weights", r["params_experts"])]
    for label, value in rows:
        print(f"  {label:<34} {value:>16,}  ({_human(value)})")
    print(f"  {'forward GFLOPs/token (matmuls)':<34} {r['flops_per_token'] / 1e9:>16.4f}")
    print(f"  {'+ attention scores @ seq ' + str(r['seq_len']):<34} {r['attention_flops_per_token'] / 1e9:>16.4f}")
    print(f"  {'training GFLOPs/token (3x fwd)':<34} {r['training_flops_per_token'] / 1e9:>16.4f}")
    if "per_rank_bytes" in r:
        print_memory(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="model YAML (configs/model/*.yaml) or run YAML (its model section)")
    src.add_argument("--run-config", help="run YAML (configs/run/*.yaml): layout, precision, ZeRO, batch")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override key=value")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--layout", action="append", default=None, help="parallel layout, e.g. dp=32,tp=1,ep=8")
    ap.add_argument("--world", type=int, default=None, help="with --run-config: GPUs (dp = world / tp)")
    ap.add_argument("--param-dtype", default=None, choices=sorted(PRECISION_RULES),
                    help="precision rule (default bf16, or the run config's deepspeed.precision)")
    ap.add_argument("--zero", type=int, default=None, choices=[0, 1, 2, 3],
                    help="ZeRO stage (default 1, or the run config's deepspeed.zero_stage)")
    ap.add_argument("--table-optimizer", default="adamw", choices=["adamw", "row_sparse_adam"],
                    help="with --config: OE table optimizer (dense or sparse table gradient)")
    ap.add_argument("--seq-len", type=int, default=None, help="for attention FLOPs (default max_seq_len)")
    args = ap.parse_args(argv)
    try:
        layout = Layout.parse(args.layout) if args.layout else None
        if args.run_config:
            report = inspect_run_config(args.run_config, args.override, args.world, layout, args.param_dtype,
                                        args.zero)
        else:
            cfg = load_model_config(args.config, args.override)
            report = inspect_config(cfg, layout, args.param_dtype or "bf16", 1 if args.zero is None else args.zero,
                                    args.seq_len, args.table_optimizer)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
