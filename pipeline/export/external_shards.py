"""Export merger for the parameters the trainer keeps outside DeepSpeed (pipeline/train/external_params.py): the
row-sharded Over-Encoding table and expert-parallel expert shards, saved per shard under
step_N/external/<parameter name>/ in the resharding format of pipeline/parallel/sharded_checkpoint.py.

Each one is reassembled from its shard files (safetensors, row ranges from meta.json) into the full tensor
under its single-process name, whatever world size, ZeRO stage or ep wrote it. Registered with
`register_merger`, so `consolidate` (and launch/export.py) handle ZeRO-2 + EP + sharded-OE checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import register_merger
from pipeline.parallel.sharded_checkpoint import read_meta
from pipeline.train.checkpoint import EXTERNAL_DIR


def read_full_rows(folder: Path) -> torch.Tensor:
    """All rows of one sharded parameter, concatenated in row order (the shards tile [0, global_rows))."""
    meta = read_meta(folder)
    pieces, next_row = [], 0
    for shard in sorted(meta["shards"], key=lambda s: s["row_start"]):
        if shard["row_start"] != next_row:
            raise CheckpointError(f"{folder}: shards leave rows [{next_row}, {shard['row_start']}) uncovered")
        with safe_open(str(folder / shard["file"]), framework="pt") as f:
            pieces.append(f.get_tensor("param"))
        next_row = shard["row_end"]
    if next_row != meta["global_rows"]:
        raise CheckpointError(f"{folder}: shards cover {next_row} of {meta['global_rows']} rows")
    return torch.cat(pieces, dim=0).float()


@register_merger
def merge_external_shards(state: dict[str, torch.Tensor], step_dir: Path) -> dict[str, torch.Tensor]:
    root = Path(step_dir) / EXTERNAL_DIR
    if not root.is_dir():
        return state
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in state:
            raise CheckpointError(f"{folder}: {folder.name} is both in the DeepSpeed weights and sharded outside")
        state[folder.name] = read_full_rows(folder)
    return state
