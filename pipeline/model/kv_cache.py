"""Decoding state for incremental generation: a KV cache per attention layer and the n-gram id cache of
Over-Encoding (the last n-1 token ids of every row), so a decoded token costs one attention step against the
cache and one OE lookup per table instead of a recomputation of the prefix.

Rows may hold prompts of different lengths, left-padded: `valid` marks real (non-pad) positions; padded
keys are never attended by real queries. Pad tokens must be id 0, which is also what Over-Encoding uses for
"before the sequence start", so left padding does not change any n-gram id (and RoPE is relative, so it does
not change attention scores either).
"""
from __future__ import annotations

import torch


class LayerKVCache:
    """Preallocated keys / values [B, H, capacity, hd] of one attention layer; `length` positions filled."""

    def __init__(self, state: "DecodeCache"):
        self.state = state
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, s, hd] at positions [length, length + s); return all keys / values so far."""
        start, s = self.state.length, k.shape[2]
        end = start + s
        if end > self.state.capacity:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.state.capacity}")
        if self.k is None:
            b, h, _, hd = k.shape
            self.k = k.new_zeros(b, h, self.state.capacity, hd)
            self.v = v.new_zeros(b, h, self.state.capacity, hd)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def attention_mask(self, s: int) -> torch.Tensor | None:
        """bool [B, 1, s, length+s] for the s new queries, or None when plain attention to every key is
        exact (one new query and no padding)."""
        return self.state.attention_mask(s)


class DecodeCache:
    """All decoding state of one batch of rows. `advance(s)` is called by the model after each chunk."""

    def __init__(self, batch: int, capacity: int, n_layers: int, ngram_context: int, device: torch.device):
        self.capacity = capacity
        self.length = 0
        self.layers = [LayerKVCache(self) for _ in range(n_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.has_padding = False
        # Over-Encoding: last n-1 token ids per row, most recent last; zeros = "before the start".
        self.ngram_history = (torch.zeros(batch, ngram_context, dtype=torch.long, device=device)
                              if ngram_context > 0 else None)

    def set_valid(self, valid: torch.Tensor) -> None:
        """Mark which of the next s = valid.shape[1] positions are real tokens (False = left padding)."""
        s = valid.shape[1]
        self.valid[:, self.length:self.length + s] = valid
        self.has_padding = self.has_padding or not bool(valid.all())

    def attention_mask(self, s: int) -> torch.Tensor | None:
        start, end = self.length, self.length + s
        if s == 1 and not self.has_padding:
            return None
        device = self.valid.device
        q_pos = torch.arange(start, end, device=device)
        k_pos = torch.arange(end, device=device)
        causal = k_pos[None, :] <= q_pos[:, None]                                  # [s, end]
        key_ok = self.valid[:, None, :end]                                         # [B, 1, end]
        # A pad query has no real key to attend: let it see the earlier pads instead, so its (ignored)
        # output stays finite and never leaks NaN into real rows through later layers' values.
        query_is_pad = ~self.valid[:, start:end, None]                             # [B, s, 1]
        return (causal[None] & (key_ok | query_is_pad))[:, None]                   # [B, 1, s, end]

    def advance(self, s: int) -> None:
        self.length += s
