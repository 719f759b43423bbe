"""Decoding state for incremental generation: a KV cache per attention layer and the n-gram id cache of
Over-Encoding (the last n-1 token ids of every row), so a decoded token costs one attention step against the
cache and one OE lookup per table instead of a recomputation of the prefix.

The cache is a sequence of slots, filled in order for all rows at once; `valid` marks the slots that hold a
row's real tokens. A slot is not real when it is left padding (rows hold prompts of different lengths), the
padding of a chunk in which a row has fewer new tokens, or a token that speculative decoding dropped
(`drop_last`: a rejected draft). Keys of such slots are never attended by real queries, and a token's RoPE
position is the number of real slots before it in its row (`positions`), so neither padding nor dropped
slots change any attention score. Left-pad tokens must be id 0, which is also what Over-Encoding uses for
"before the sequence start", so left padding does not change any n-gram id.
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
        self.count = torch.zeros(batch, dtype=torch.long, device=device)     # real slots per row
        self.positions: torch.Tensor | None = None                           # [B, s] of the current chunk
        self.has_padding = False                                             # some slot is not real
        self._mask: torch.Tensor | None = None                               # of the current chunk
        # Over-Encoding: last n-1 token ids per row, most recent last; zeros = "before the start".
        self.ngram_history = (torch.zeros(batch, ngram_context, dtype=torch.long, device=device)
                              if ngram_context > 0 else None)

    def set_valid(self, valid: torch.Tensor) -> None:
        """Mark which of the next s = valid.shape[1] slots hold real tokens (False = padding), and set their
        RoPE `positions`: the real slots before each one in its row."""
        s = valid.shape[1]
        self.valid[:, self.length:self.length + s] = valid
        self.has_padding = self.has_padding or not bool(valid.all())
        real = valid.long()
        self._mask = None
        self.positions = self.count[:, None] + real.cumsum(dim=1) - real
        self.count += real.sum(dim=1)

    def attention_mask(self, s: int) -> torch.Tensor | None:
        """The chunk's mask (see LayerKVCache.attention_mask), built once for all layers."""
        if s == 1 and not self.has_padding:
            return None
        if self._mask is None:
            self._mask = self._build_mask(s)
        return self._mask

    def _build_mask(self, s: int) -> torch.Tensor:
        start, end = self.length, self.length + s
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

    def drop_last(self, n: torch.Tensor, ngram_history: torch.Tensor | None = None) -> None:
        """Speculative decoding's rollback: the last n[b] real slots of row b stop being real (their keys stay,
        never attended again; later tokens get their RoPE positions). `ngram_history` [B, n-1] replaces the
        n-gram id cache: the last n-1 ids each row keeps (the cache holds only the latest ids, so the caller,
        who has the tokens, supplies them)."""
        if bool(n.any()):
            if bool((self.count < n).any()):
                raise ValueError(f"drop_last({n.tolist()}): rows hold only {self.count.tolist()} real slots")
            valid = self.valid[:, :self.length]
            real_from_here = valid.flip(1).long().cumsum(dim=1).flip(1)     # real slots at or after each slot
            self.valid[:, :self.length] = valid & (real_from_here > n[:, None])
            self.count -= n
            self.has_padding = True
        if self.ngram_history is not None:
            if ngram_history is None or ngram_history.shape != self.ngram_history.shape:
                raise ValueError("drop_last on an Over-Encoding cache needs the last n-1 ids of every row")
            self.ngram_history = ngram_history.to(self.ngram_history)
