"""Analytic parameter counts and forward FLOPs per token, computed from the config alone.

Conventions (chosen to match the paper's Tables 1 and 8):
- `embedding` counts the vocab_size rows tokens can reach (Table 1: 50280·D); padding rows are in
  `embedding_padded` and in `total`.
- `active` = parameters one token touches: all dense weights, top_k of n_experts experts, both embedding
  matrices (as OLMoE counts them), the OE projections, and NOT the OE tables (a token reads k(n-1) rows).
- `forward_flops_per_token` = 2 x the matmul weights one token multiplies (attention projections, router,
  active experts, output head(s), OE projections, MTP modules); lookups, norms and attention scores are
  excluded, exactly as Table 8 (OLMoE-7B: 2.3578 GFLOPs; OE adds 2·D²). For MFU use
  `training_flops_per_token`, which adds attention scores (4·S·D per layer, full S as in PaLM/Megatron)
  and multiplies by 3 (forward + backward).
"""
from __future__ import annotations

from pipeline.config.model import ModelConfig


def _block_params(cfg: ModelConfig) -> dict[str, int]:
    d = cfg.d_model
    attention = 4 * d * d
    norms = 2 * d + (2 * d if cfg.qk_norm else 0)
    if cfg.is_moe:
        expert = 3 * d * cfg.expert_hidden
        return {"attention": attention, "norms": norms, "router": d * cfg.n_experts,
                "experts": cfg.n_experts * expert, "experts_active": cfg.top_k * expert, "dense_mlp": 0}
    mlp = 3 * d * cfg.dense_hidden
    return {"attention": attention, "norms": norms, "router": 0, "experts": 0, "experts_active": 0,
            "dense_mlp": mlp}


def _block_total(b: dict[str, int]) -> int:
    return b["attention"] + b["norms"] + b["router"] + b["experts"] + b["dense_mlp"]


def _block_matmul_active(b: dict[str, int]) -> int:
    return b["attention"] + b["router"] + b["experts_active"] + b["dense_mlp"]


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    d, vp = cfg.d_model, cfg.padded_vocab_size
    block = _block_params(cfg)
    oe, od = cfg.over_encoding, cfg.over_decoding
    c: dict[str, int] = {
        "embedding": cfg.vocab_size * d,
        "embedding_padded": vp * d,
        "lm_head": vp * d,
        "final_norm": d,
        "blocks": cfg.n_layers * _block_total(block),
        "experts": cfg.n_layers * block["experts"],
        "oe_tables": 0, "oe_projections": 0, "oe_other": 0, "over_decoding": 0,
    }
    if oe.enabled:
        table_dim = d // oe.num_tables
        c["oe_tables"] = sum(oe.moduli()) * table_dim
        c["oe_projections"] = oe.num_tables * table_dim * d
        c["oe_other"] = d if oe.output_norm else 0
    if od.mode == "mtp":
        c["over_decoding"] = od.depth * (2 * d + 2 * d * d + _block_total(block))
        c["experts"] += od.depth * block["experts"]
    elif od.mode == "product":
        per_head = (d * od.head_dim + od.head_dim * vp) if od.head_dim else d * vp
        c["over_decoding"] = (od.n - 1) * per_head
    c["over_encoding"] = c["oe_tables"] + c["oe_projections"] + c["oe_other"]
    c["total"] = (c["embedding_padded"] + c["lm_head"] + c["final_norm"] + c["blocks"] + c["over_encoding"]
                  + c["over_decoding"])
    n_moe_blocks = cfg.n_layers + (od.depth if od.mode == "mtp" else 0)
    inactive_experts = n_moe_blocks * (block["experts"] - block["experts_active"])
    c["active"] = c["total"] - inactive_experts - c["oe_tables"]
    # Table 1 "emb params": the 1-gram embedding plus the OE tables.
    c["embedding_with_oe"] = c["embedding"] + c["oe_tables"]
    return c


def forward_flops_per_token(cfg: ModelConfig) -> int:
    """2 x matmul weights applied per token (paper Table 8 convention, see module docstring)."""
    d, vp = cfg.d_model, cfg.padded_vocab_size
    block = _block_matmul_active(_block_params(cfg))
    oe, od = cfg.over_encoding, cfg.over_decoding
    weights = cfg.n_layers * block + vp * d
    if oe.enabled:
        weights += oe.num_tables * (d // oe.num_tables) * d          # the k(n-1) projections: D·D
    if od.mode == "mtp":
        weights += od.depth * (2 * d * d + block + vp * d)           # M, one block, the shared head again
    elif od.mode == "product":
        weights += (od.n - 1) * ((d * od.head_dim + od.head_dim * vp) if od.head_dim else d * vp)
    return 2 * weights


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward q·k and p·v FLOPs per token: 2 matmuls x 2·S·D per attention layer (no causal halving)."""
    n_attn = cfg.n_layers + (cfg.over_decoding.depth if cfg.over_decoding.mode == "mtp" else 0)
    return n_attn * 4 * seq_len * cfg.d_model


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward (3x forward) model FLOPs per token, for MFU."""
    return 3 * (forward_flops_per_token(cfg) + attention_flops_per_token(cfg, seq_len))
