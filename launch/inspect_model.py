"""Parameter / FLOP / memory inspector for a model config or a run config.

    python launch/inspect_model.py --config configs/model/olmoe-7b-oe12.8m.yaml [--json] [--layout dp=32,ep=8]
        [--param-dtype bf16|fp32|bf16-master-weights] [--zero 0-3] [--seq-len 4096] [-o key=value ...]
    python launch/inspect_model.py --run-config configs/run/olmoe-7b-oe12.8m-ep8.yaml --world 8 [--json]
        [--cluster inter_bw=25e9,mfu=0.35] [--ranks 0,5,255] [--dry-run]

Builds the model on the meta device (no memory), checks the analytic counts of pipeline.model.flops
against the real parameter tensors, and prints parameters, forward FLOPs per token and, with --layout or
--run-config, per-GPU bytes of parameters, gradients and optimizer state (pipeline/model/memory.py: the
precision rule per parameter kind, activations excluded). --config accepts a model YAML or a run YAML (its
`model:` section only; -o overrides model keys). --run-config reads the whole run: tp / ep, ZeRO stage,
precision, table optimizer and batch from the config, dp = --world / tp (or --layout), checked with the
trainer's own layout checks; -o then overrides run keys (model.n_layers=13, deepspeed.zero_stage=3).
With a layout it also prints the bytes of every collective per optimizer step and the predicted step time on
a stated cluster (launch/inspect_comm.py, pipeline/model/comm_model.py, step_time.py); --dry-run builds the
trainer's real groups and shards for every chosen rank under a fake process group on meta tensors and checks
them against the printed placement (pipeline/train/dry_run.py; exit 1 when they differ).
"""
from __future__ import annotations

import argparse
import json
import sys

from launch.inspect_comm import add_arguments, add_scale, parse_ranks, print_dry_run, print_scale
from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.model.inspect_report import inspect_config, meta_counts
from pipeline.model.memory import PRECISION_RULES, TERM_NAMES, Layout

__all__ = ["inspect_config", "inspect_run_config", "main", "meta_counts"]


def load_inspected_run(path: str, overrides: list[str]):
    """The run config as the inspector reads it: data.path may be missing (inspect reads no data)."""
    from pipeline.config.run import load_run_config

    try:
        return load_run_config(path, overrides)
    except ConfigError as e:
        if not str(e).startswith("data.path"):
            raise
        return load_run_config(path, [*overrides, "data.path=(not read by inspect)"])


def run_world(cfg, world: int | None, layout: Layout | None) -> int:
    """--world, or dp x tp of --layout (whose tp / ep must be the run config's)."""
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
    return world


def inspect_run_config(path: str, overrides: list[str], world: int | None, layout: Layout | None,
                       param_dtype: str | None = None, zero_stage: int | None = None) -> dict:
    """The run's layout (tp, ep from `parallel:`, dp = world / tp), precision, ZeRO stage and batch."""
    from pipeline.train.run_summary import inspect_run

    cfg = load_inspected_run(path, overrides)
    return inspect_run(cfg, run_world(cfg, world, layout), str(path), param_dtype, zero_stage)


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
    add_arguments(ap)
    args = ap.parse_args(argv)
    dry = None
    try:
        layout = Layout.parse(args.layout) if args.layout else None
        if args.dry_run and not args.run_config:
            raise ConfigError("--dry-run needs --run-config (it builds the trainer's ParallelRun from a run config)")
        if args.run_config:
            report, cfg, zero_config = _run_report(args, layout)
            model_cfg = cfg.model
            layout = Layout(report["layout"]["dp"], report["layout"]["tp"], report["layout"]["ep"])
        else:
            model_cfg = load_model_config(args.config, args.override)
            zero = 1 if args.zero is None else args.zero
            report = inspect_config(model_cfg, layout, args.param_dtype or "bf16", zero, args.seq_len,
                                    args.table_optimizer)
            zero_config = None
        if layout is not None:
            add_scale(report, model_cfg, layout, build_model(model_cfg, device="meta", seed=0), args, zero_config)
        if args.dry_run:
            from pipeline.train.dry_run import dry_run
            dry = report["dry_run"] = dry_run(cfg, report["run"]["world"], parse_ranks(args.ranks))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
        if "scale" in report:
            print_scale(report)
        if dry is not None:
            print_dry_run(dry)
    return 1 if dry is not None and dry["mismatches"] else 0


def _run_report(args, layout: Layout | None):
    """(report, run config, the DeepSpeed JSON's zero_optimization section as training merges it)."""
    from pipeline.train.deepspeed_config import build_deepspeed_config
    from pipeline.train.run_summary import inspect_run

    cfg = load_inspected_run(args.run_config, args.override)
    world = run_world(cfg, args.world, layout)
    report = inspect_run(cfg, world, str(args.run_config), args.param_dtype, args.zero)
    zero_config = build_deepspeed_config(cfg, world // cfg.parallel.tp)["zero_optimization"]
    return report, cfg, zero_config


if __name__ == "__main__":
    sys.exit(main())
