"""Checkpoints of row-sharded tables (the OE table and its optimizer state) that resume on any number of
ranks: save on 2, load on 1 or 4.

Layout of `<dir>/`: one safetensors file per rank, `shard-{rank:05d}-of-{world:05d}.safetensors`, holding
the rank's contiguous rows of the parameter and of every row-shaped optimizer state tensor (exp_avg,
exp_avg_sq) plus the scalar `step`; and `meta.json` (written last by rank 0, so its presence marks a complete
checkpoint) with global_rows, dim, dtype, the saved world size and every file's [row_start, row_end).
Loading reads, for its own new row range, only the overlapping slices of the saved files (safetensors
slices, no pickle, no full table in memory). Every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.data.atomic_io import atomic_write_bytes, commit, tmp_path_for

FORMAT = "oe-row-shards-v1"
ROW_STATES = ("exp_avg", "exp_avg_sq")


def save_row_shards(directory: str | Path, param: torch.Tensor, row_range: tuple[int, int], global_rows: int,
                    group: dist.ProcessGroup, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Collective over `group`: each rank writes its rows [row_range) of `param` (and optimizer state)."""
    directory = Path(directory)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"param": param.detach().contiguous().cpu()}
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    for key in ROW_STATES:
        if key in state:
            tensors[key] = state[key].detach().contiguous().cpu()
    if "step" in state:
        tensors["step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    write_shard(directory, rank, world, tensors)
    ranges = torch.tensor(row_range, dtype=torch.long)
    all_ranges = torch.empty(2 * world, dtype=torch.long)
    dist.all_gather_into_tensor(all_ranges, ranges, group=group)
    dist.barrier(group=group)                      # every shard file is in place before meta.json
    if rank == 0:
        write_meta(directory, global_rows, param, sorted(k for k in tensors if k != "param"),
                   [tuple(r) for r in all_ranges.view(world, 2).tolist()])
    dist.barrier(group=group)


def shard_file(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def write_meta(directory: Path, global_rows: int, like: torch.Tensor, has_optimizer: list[str],
               ranges: list[tuple[int, int]]) -> None:
    """meta.json, last: every shard file named in it is already in place. `like`: a shard (trailing shape, dtype)."""
    world = len(ranges)
    atomic_write_bytes(Path(directory) / "meta.json", json.dumps({
        "format": FORMAT, "global_rows": global_rows, "dim": like.shape[1], "trailing_shape": list(like.shape[1:]),
        "dtype": str(like.dtype), "world_size": world, "has_optimizer": has_optimizer,
        "shards": [{"file": shard_file(r, world), "row_start": s, "row_end": e}
                   for r, (s, e) in enumerate(ranges)]}, indent=1).encode())


def write_shard(directory: Path, rank: int, world: int, tensors: dict[str, torch.Tensor]) -> None:
    target = Path(directory) / shard_file(rank, world)
    tmp = tmp_path_for(target)
    save_file(tensors, str(tmp))
    commit(tmp, target)


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no meta.json (incomplete or not a row-shard checkpoint)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _read_rows(directory: Path, meta: dict, key: str, start: int, end: int, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(end - start, *like.shape[1:], dtype=like.dtype)
    filled = 0
    for shard in meta["shards"]:
        lo, hi = max(start, shard["row_start"]), min(end, shard["row_end"])
        if lo >= hi:
            continue
        with safe_open(str(directory / shard["file"]), framework="pt") as f:
            rows = f.get_slice(key)[lo - shard["row_start"]:hi - shard["row_start"]]
        out[lo - start:hi - start] = rows.to(like.dtype)
        filled += hi - lo
    if filled != end - start:
        raise ValueError(f"{directory}: shards cover {filled} of rows [{start}, {end}) for {key!r}")
    return out


@torch.no_grad()
def load_row_shards(directory: str | Path, param: torch.Tensor, row_range: tuple[int, int], global_rows: int,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Fill this rank's rows [row_range) of `param` (and the optimizer state) from a checkpoint saved on any
    number of ranks. Not collective."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta["global_rows"] != global_rows or meta["dim"] != param.shape[1]:
        raise ValueError(f"{directory}: table is {meta['global_rows']} x {meta['dim']}, the model expects "
                         f"{global_rows} x {param.shape[1]}")
    start, end = row_range
    param.copy_(_read_rows(directory, meta, "param", start, end, param))
    if optimizer is None or not meta["has_optimizer"]:
        return
    state = optimizer.state[param]
    for key in ROW_STATES:
        if key in meta["has_optimizer"]:
            state[key] = _read_rows(directory, meta, key, start, end, param)
    if "step" in meta["has_optimizer"]:
        with safe_open(str(directory / meta["shards"][0]["file"]), framework="pt") as f:
            state["step"] = f.get_tensor("step").reshape(()).clone()
