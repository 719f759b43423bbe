"""Reading any export folder (consolidated or HF): every file checked against the checksums.json written
with it, the safetensors weights, and the provenance of export.json with its recorded paths resolved
(recorded_paths.py). Shared by load.py (consolidated) and hf_read.py (HF layouts)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import EXPORT_INFO_FILE
from pipeline.export.recorded_paths import resolve_export_meta
from pipeline.train.checkpoint_manifest import CheckpointDamaged, verify_checkpoint


def verify_export(folder: Path) -> None:
    try:
        verify_checkpoint(folder)
    except CheckpointDamaged as e:
        raise CheckpointError(f"{e} (re-export the checkpoint)") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None


def export_meta(folder: Path, loaded_from: str) -> dict:
    meta = {}
    if (folder / EXPORT_INFO_FILE).is_file():
        meta = json.loads((folder / EXPORT_INFO_FILE).read_text())
    meta = resolve_export_meta(meta, folder, EXPORT_INFO_FILE)
    return {**meta, "source": str(folder.resolve()), "loaded_from": loaded_from}
