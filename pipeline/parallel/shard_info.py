"""Which slice of a full (single-process) parameter a rank holds.

Every module swapped in by the parallelize step keeps the dense parameter names and marks each sharded
parameter with the dimension and range it holds, so tests compare a rank's shard with the matching slice
of a single-process model, and checkpoint code knows how shards tile the full tensor, without any
collective ever materialising a full tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShardInfo:
    dim: int          # dimension of the full tensor that is split
    start: int        # first index held
    end: int          # one past the last index held
    full_size: int    # size of that dimension in the full tensor


def even_bounds(size: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous balanced split: part i holds [i*ceil(size/parts), ...), the last parts may be shorter
    (or empty when size < parts)."""
    per = -(-size // parts)
    start = min(index * per, size)
    return start, min(start + per, size)


def mark_sharded(param: torch.Tensor, dim: int, start: int, end: int, full_size: int) -> None:
    param._shard_info = ShardInfo(dim, start, end, full_size)


def shard_info(param: torch.Tensor) -> ShardInfo | None:
    return getattr(param, "_shard_info", None)


def local_slice(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of `full` that `param` holds (all of it when the parameter is not sharded)."""
    info = shard_info(param)
    if info is None:
        return full
    if full.shape[info.dim] != info.full_size:
        raise ValueError(f"full tensor has {full.shape[info.dim]} entries along dim {info.dim}, "
                         f"the shard expects {info.full_size}")
    return full.narrow(info.dim, info.start, info.end - info.start)
