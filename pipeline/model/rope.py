"""Rotary position embedding (RoPE, theta 10,000 in OLMoE), rotate-half layout as in Llama/OLMoE."""
from __future__ import annotations

import torch


class RotaryEmbedding:
    """Computes cos/sin tables on demand for the sequence length and device in use (no buffers, so models
    built on the meta device need no re-initialisation of RoPE state)."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, str(device), dtype)
        if key not in self._cache:
            if device.type == "meta":
                shape = (seq_len, self.head_dim)
                return torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype)
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, device=device,
                                                          dtype=torch.float64) / self.head_dim))
            angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float64), inv_freq)
            angles = torch.cat([angles, angles], dim=-1)
            self._cache = {key: (angles.cos().to(dtype), angles.sin().to(dtype))}  # keep only the latest
        return self._cache[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, hd]; cos/sin: [S, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
