"""Parameter / FLOP / memory inspector for a model config.

    python launch/inspect_model.py --config configs/model/olmoe-7b-oe12.8m.yaml [--json] [--layout dp=32,ep=8]
        [--param-dtype bf16] [--zero 1] [--seq-len 4096] [-o key=value ...]

Builds the model on the meta device (no memory), checks the analytic counts of pipeline.model.flops
against the real parameter tensors, and prints parameters, forward FLOPs per token and, with --layout,
per-rank bytes of parameters, gradients and optimizer state. Accepts a model YAML or a run YAML with a
`model:` section.
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
from pipeline.model.memory import Layout, per_rank_bytes


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
                   seq_len: int | None = None) -> dict:
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
        report["layout"] = {"dp": layout.dp, "tp": layout.tp, "ep": layout.ep,
                            "param_dtype": param_dtype, "zero_stage": zero_stage}
        report["per_rank_bytes"] = per_rank_bytes(cfg, layout, param_dtype, zero_stage)
    return report


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


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
        lay = r["layout"]
        print(f"per rank at dp={lay['dp']} tp={lay['tp']} ep={lay['ep']}, {lay['param_dtype']} params, "
              f"ZeRO-{lay['zero_stage']} (activations excluded):")
        for key, value in r["per_rank_bytes"].items():
            print(f"  {key:<34} {value / 2**30:>12.3f} GiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="model YAML (configs/model/*.yaml) or run YAML")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override key=value")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--layout", action="append", default=None, help="parallel layout, e.g. dp=32,tp=1,ep=8")
    ap.add_argument("--param-dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--zero", type=int, default=1, choices=[0, 1, 2], help="ZeRO stage for the memory estimate")
    ap.add_argument("--seq-len", type=int, default=None, help="for attention FLOPs (default max_seq_len)")
    args = ap.parse_args(argv)
    try:
        cfg = load_model_config(args.config, args.override)
        layout = Layout.parse(args.layout) if args.layout else None
        report = inspect_config(cfg, layout, args.param_dtype, args.zero, args.seq_len)
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
