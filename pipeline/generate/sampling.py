"""Next-token choice from logits: greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0        # 0 = greedy (argmax)
    top_k: int = 0                  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0              # keep the smallest set with cumulative probability >= top_p; 1 = all

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set excluded tokens to -inf. logits [B, V] (already divided by the temperature)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits [..., V] -> the distribution sampling draws from [..., V] (fp32): temperature, top-k, top-p, then
    softmax; greedy (temperature 0) is the one-hot of the argmax. Speculative decoding warps the target and
    the draft logits with this same function, so it samples exactly what `sample_next` samples."""
    logits = logits.float()
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    shape = logits.shape
    logits = filter_logits(logits.reshape(-1, shape[-1]) / cfg.temperature, cfg.top_k, cfg.top_p)
    return logits.softmax(dim=-1).view(shape)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]."""
    if cfg.temperature == 0:
        return logits.float().argmax(dim=-1)
    return torch.multinomial(next_token_probs(logits, cfg), 1, generator=generator).squeeze(-1)
