"""Weighted mixture of sources: which source global training sample i comes from, as a pure function of i.

Rule (per sequence; every training sequence is seq_len tokens, so the token share equals the sequence
share): source s with normalised weight w_s owns the events t(s, k) = (k + 1/2) / w_s, k = 0, 1, ...; the
events of all sources are ordered by (t, s) and global sample i is the i-th event, i.e. sample k of source s.
After any prefix of n samples each source has received floor(n' w_s + 1/2) samples for some n' within
S/2 of n, so its share is exact to within one sequence per source at every step, not only on average
(this is the stride / largest-deficit schedule Megatron's BlendedDataset builds with its C++ helper).

Unlike Megatron, nothing is precomputed: the i-th event lies at t in [i - S, i + S + 1] (S = number of
sources), so a block of samples is located by enumerating the few events in that window. No blending
array of max_steps x global_batch entries exists on any rank, any sample can be located in O(S) arithmetic,
the order does not depend on the world size, and resuming needs only the count of samples consumed.

Documents are packed within their own source (pipeline/data/packing.py per source), never across
sources, so a window never mixes two sources.
"""
from __future__ import annotations

import math

import numpy as np


class Blend:
    def __init__(self, weights: list[float]):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be finite, >= 0 and not all 0, got {list(weights)}")
        self.weights = w / w.sum()
        self.active = np.flatnonzero(self.weights > 0)   # a zero-weight source owns no events

    def _time(self, s: int, k: np.ndarray | int):
        return (np.asarray(k, dtype=np.float64) + 0.5) / self.weights[s]

    def _first_at_or_after(self, s: int, t: float) -> int:
        """Smallest k >= 0 with t(s, k) >= t (= how many events of s lie before t)."""
        k = max(0, math.ceil(t * self.weights[s] - 0.5))
        # The estimate can be one off in floating point; settle it with the very expression used for ordering.
        while self._time(s, k) < t:
            k += 1
        while k > 0 and self._time(s, k - 1) >= t:
            k -= 1
        return k

    def _window(self, t_lo: float, t_hi: float) -> tuple[int, np.ndarray, np.ndarray]:
        """Events with t in [t_lo, t_hi), ordered: (rank of the first one, sources, per-source indices)."""
        offset, src, idx, times = 0, [], [], []
        for s in self.active:
            k0, k1 = self._first_at_or_after(s, t_lo), self._first_at_or_after(s, t_hi)
            offset += k0
            ks = np.arange(k0, k1, dtype=np.int64)
            src.append(np.full(ks.size, s, dtype=np.int64))
            idx.append(ks)
            times.append(self._time(s, ks))
        src, idx, times = np.concatenate(src), np.concatenate(idx), np.concatenate(times)
        order = np.lexsort((src, times))
        return offset, src[order], idx[order]

    def locate(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, index within the source) of global samples start .. start + count - 1."""
        if count <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        margin = len(self.active) + 2
        offset, src, idx = self._window(max(0.0, start - margin), start + count + margin)
        lo = start - offset
        if lo < 0 or lo + count > src.size:   # cannot happen by the bound above; never return a wrong sample
            raise AssertionError(f"mixture window [{start}, {start + count}) not covered")
        return src[lo: lo + count], idx[lo: lo + count]

    def counts(self, n: int) -> np.ndarray:
        """Samples each source has contributed to the first n global samples."""
        out = np.zeros(self.weights.size, dtype=np.int64)
        if n <= 0:
            return out
        margin = len(self.active) + 2
        offset, src, idx = self._window(max(0.0, n - margin), n + margin)
        for s in self.active:
            out[s] = self._first_at_or_after(s, max(0.0, n - margin))
        head = src[: n - offset]
        np.add.at(out, head, 1)
        return out


class MixedSequences:
    """Global training sample i -> a packed sequence of one source, by the Blend above.

    A mixture may change on resume (e.g. a cooldown on a higher-quality mix): the new weights start a new
    segment at the resume position; each source then continues from the samples it had already given
    (`base`), so no sequence is repeated or skipped by the change itself."""

    def __init__(self, names: list[str], weights: list[float], sequences: list, segment_start: int = 0,
                 base: list[int] | None = None):
        self.names, self.weights, self.sources = list(names), [float(w) for w in weights], list(sequences)
        self.blend = Blend(self.weights)
        self.segment_start = int(segment_start)
        self.base = np.asarray(base if base is not None else [0] * len(names), dtype=np.int64)
        first = self.sources[0]
        self.seq_len, self.seed = first.seq_len, first.seed

    def counts(self, consumed: int) -> np.ndarray:
        """Samples taken from each source by the first `consumed` global samples."""
        return self.base + self.blend.counts(consumed - self.segment_start)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        start, count = int(indices[0]), int(indices.size)
        if start < self.segment_start or not np.array_equal(indices, start + np.arange(count)):
            raise ValueError(f"mixture batches are runs of consecutive samples >= {self.segment_start}")
        src, k = self.blend.locate(start - self.segment_start, count)
        rows = [self.sources[s][int(self.base[s] + j)] for s, j in zip(src, k)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

    @property
    def samples_per_epoch(self) -> int:
        """All sources' sequences once (the `epoch` metric of a mixture: data seen / data available)."""
        return sum(s.samples_per_epoch for s in self.sources)

    def state(self) -> dict:
        return {"names": self.names, "weights": self.weights, "segment_start": self.segment_start,
                "base": [int(b) for b in self.base]}
