"""What a model config amounts to: parameter counts (analytic, checked against the real tensors of a
meta-device build), FLOPs per token and, given a layout, per-rank memory (pipeline/model/memory.py).
Used by launch/inspect_model.py and by the trainer's start-of-run summary (pipeline/train/run_summary.py).
"""
from __future__ import annotations

from pipeline.model import build_model
from pipeline.model.flops import (attention_flops_per_token, forward_flops_per_token,
                                  param_counts, training_flops_per_token)
from pipeline.model.memory import Layout, deepspeed_buffer_bytes, memory_breakdown, per_rank_bytes


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
    model = build_model(cfg, device="meta", seed=0)   # a fixed seed: drawing one would advance torch's RNG
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
