"""Pre-norm transformer block: h += attn(norm(h)); h += mlp(norm(h)). The MLP is a dropless MoE (OLMoE)
or a dense SwiGLU (dense baselines)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config.model import ModelConfig
from pipeline.model.attention import Attention
from pipeline.model.mlp import SwiGLU
from pipeline.model.moe import MoE, RouterStats
from pipeline.model.norms import RMSNorm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg.d_model, cfg.n_heads, cfg.qk_norm, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.is_moe:
            self.mlp = MoE(cfg.d_model, cfg.n_experts, cfg.top_k, cfg.expert_hidden)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.dense_hidden)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None, kv_cache=None) -> tuple[torch.Tensor, RouterStats | None]:
        h = h + self.attention(self.attention_norm(h), rope, attn_mask, kv_cache)
        if isinstance(self.mlp, MoE):
            y, stats = self.mlp(self.ffn_norm(h))
        else:
            y, stats = self.mlp(self.ffn_norm(h)), None
        return h + y, stats
