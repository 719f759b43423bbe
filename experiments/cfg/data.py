"""Token streams for the CFG experiment: vocabulary {0: BOS/EOS separator, 1, 2, 3}.

Strings are packed as 0 s1 0 s2 0 ... (GPT-2 style, no attention mask between strings). Every training window
starts at a separator, so position 0 of a window is exactly the generation setting (sampling from BOS).
Windows carry JOINT extra tokens so the 3-gram output head has targets x_{i+1}, x_{i+2}, x_{i+3} everywhere.
"""
from __future__ import annotations

import numpy as np
import torch

from experiments.cfg.grammar import sample_many

BOS = 0
VOCAB = 4
JOINT = 3          # the 3-gram output head predicts the next 3 tokens


class CFGStream:
    def __init__(self, num_strings: int, seed: int, root_level: int = 0):
        strings = sample_many(num_strings, seed, root_level)
        parts = []
        for s in strings:
            parts.append(BOS)
            parts.extend(s)
        parts.append(BOS)
        self.tokens = np.asarray(parts, dtype=np.int64)
        self.starts = np.flatnonzero(self.tokens == BOS)
        self.num_strings = num_strings

    def windows(self, starts: np.ndarray, seq_len: int) -> torch.Tensor:
        """[B, seq_len + JOINT] tokens from each start (the tail is wrapped around the stream if needed)."""
        idx = (starts[:, None] + np.arange(seq_len + JOINT)[None, :]) % len(self.tokens)
        return torch.from_numpy(self.tokens[idx])

    def random_batch(self, rng: np.random.Generator, batch: int, seq_len: int) -> torch.Tensor:
        starts = self.starts[rng.integers(0, len(self.starts) - 1, size=batch)]
        return self.windows(starts, seq_len)

    def fixed_batches(self, batches: int, batch: int, seq_len: int) -> list[torch.Tensor]:
        """Deterministic validation windows (consecutive strings)."""
        step = max(1, (len(self.starts) - 1) // (batches * batch))
        starts = self.starts[: batches * batch * step: step][: batches * batch]
        return [self.windows(starts[i * batch:(i + 1) * batch], seq_len) for i in range(batches)]


def joint_targets(window: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Class id of (x_{i+1}, x_{i+2}, x_{i+3}) for i < seq_len: x_{i+1}·V² + x_{i+2}·V + x_{i+3}."""
    return window[:, 1:seq_len + 1] * VOCAB ** 2 + window[:, 2:seq_len + 2] * VOCAB + window[:, 3:seq_len + 3]
