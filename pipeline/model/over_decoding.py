"""Over-Decoding: extra output supervision by multi-token prediction (paper §3.2, Appendix C).

MTP-DS (DeepSeek-V3 sequential MTP), module d = 1..D:
    h^d_i = Block_d( M_d [ RMSNorm(h^{d-1}_i) ; RMSNorm(emb(x_{i+d})) ] ),   h^0 = main trunk output
then the SHARED final norm (or, with over_decoding.output_norm per_module, the module's own output norm, as
DeepSeek-V3 has it) and the SHARED output head predict x_{i+d+1}; emb is the model's input embedding
(the OE embedding when Over-Encoding is on, as in the paper's OT).
Product form (Appendix C): heads j = 2..n on the final hidden state, Linear(D -> d) (optional) then
Linear(-> V), predicting x_{i+j}.
No target ever crosses a document boundary: see `shift_labels`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.model import ModelConfig
from pipeline.model.block import Block
from pipeline.model.moe import RouterStats
from pipeline.model.norms import RMSNorm


def shift_labels(labels: torch.Tensor, d: int) -> torch.Tensor:
    """Targets d steps further: out[:, i] = labels[:, i+d] if labels[:, i..i+d] are all != -100, else -100.

    labels[i] is token i+1 or -100 when token i+1 starts a new document, so the condition says tokens
    i+1 .. i+d+1 all belong to position i's document (CONTRACTS.md)."""
    if d == 0:
        return labels
    s = labels.shape[1]
    if d >= s:
        return torch.full_like(labels, -100)
    valid = labels != -100
    ok = valid.clone()
    for j in range(1, d + 1):
        ok[:, : s - j] &= valid[:, j:]
    ok[:, s - d:] = False
    target = F.pad(labels[:, d:], (0, d), value=-100)
    return torch.where(ok, target, torch.full_like(labels, -100))


def shift_left(x: torch.Tensor, d: int) -> torch.Tensor:
    """[B, S, ...] -> x[:, i+d] with zeros past the end (those positions have no valid target)."""
    out = torch.zeros_like(x)
    if d < x.shape[1]:
        out[:, : x.shape[1] - d] = x[:, d:]
    return out


class MTPModule(nn.Module):
    """One DeepSeek-V3 MTP depth: RMSNorm both inputs, concatenate, project 2D -> D, one transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg)
        # DeepSeek-V3's per-module norm before the shared head; absent by default (shared trunk norm), so
        # checkpoints without mtp.{d}.output_norm.weight keep loading (OLMoE.mtp_norm picks the norm).
        per_module = cfg.over_decoding.output_norm == "per_module"
        self.output_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if per_module else None

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, rope, attn_mask, kv_cache=None
                ) -> tuple[torch.Tensor, RouterStats | None]:
        """kv_cache (a kv_cache.LayerKVCache): incremental drafting, as in Attention.forward."""
        x = self.proj(torch.cat([self.hidden_norm(h_prev), self.embed_norm(emb_next)], dim=-1))
        return self.block(x, rope, attn_mask, kv_cache)


class ProductHead(nn.Module):
    """Appendix C head for x_{i+j}: optional Linear(D -> head_dim), then Linear(-> padded V)."""

    def __init__(self, d_model: int, head_dim: int, vocab: int):
        super().__init__()
        self.down = nn.Linear(d_model, head_dim, bias=False) if head_dim > 0 else None
        self.out = nn.Linear(head_dim or d_model, vocab, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.down(h) if self.down is not None else h)
