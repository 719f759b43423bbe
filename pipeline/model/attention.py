"""Multi-head causal self-attention (OLMoE): no biases, QK-norm over the full q and k before RoPE, SDPA,
optional document masking so tokens attend only within their own packed document."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.norms import RMSNorm
from pipeline.model.rope import apply_rope


def document_attention_mask(doc_starts: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B, 1, S, S] (True = may attend): causal and same document. None when every row holds a single
    document, so SDPA can take its is_causal fast path."""
    if doc_starts is None:
        return None
    if not bool(doc_starts[:, 1:].any()):
        return None
    doc_ids = doc_starts.long().cumsum(dim=1)                       # [B, S]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]           # [B, S, S]
    s = doc_starts.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_starts.device).tril()
    return (same_doc & causal)[:, None]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, qk_norm: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        # OLMoE normalises the whole q / k vectors (all heads together), not per head.
        self.q_norm = RMSNorm(d_model, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(d_model, norm_eps) if qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        """kv_cache (a kv_cache.LayerKVCache, decoding only): x holds the new positions, rope their
        cos/sin; keys and values are appended to the cache and the queries attend over all of it."""
        b, s, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            attn_mask = kv_cache.attention_mask(s)
            k, v = kv_cache.append(k, v)
            y = (F.scaled_dot_product_attention(q, k, v) if attn_mask is None
                 else F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))
        elif attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, d))
