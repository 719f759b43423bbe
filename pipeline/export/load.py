"""Load a model for inference on one process from a consolidated export folder (model.safetensors +
config.yaml, see consolidate.py), a HF export folder (config.json + model.safetensors, see hf_read.py) or
directly from a training checkpoint (run / checkpoints / step_N folder, consolidated in memory). Nothing is
unpickled: safetensors, YAML, and DeepSpeed's own checkpoint reader."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig, load_model_config
from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import MODEL_CONFIG_FILE, WEIGHTS_FILE, check_state_dict, consolidate
from pipeline.export.export_folder import export_meta, read_weights, verify_export
from pipeline.export.hf_read import is_hf_export, load_hf_state
from pipeline.export.recorded_paths import resolve_checkpoint_meta


def is_export_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / WEIGHTS_FILE).is_file() and (p / MODEL_CONFIG_FILE).is_file()


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(state dict, model config, provenance) from an export folder or a checkpoint."""
    p = Path(path)
    if is_hf_export(p):
        return load_hf_state(p)
    if is_export_folder(p):
        verify_export(p)       # every file of the export against the checksums written with it
        try:
            cfg = load_model_config(p / MODEL_CONFIG_FILE)
        except ConfigError as e:
            raise CheckpointError(f"{p / MODEL_CONFIG_FILE}: {e}") from None
        state = read_weights(p / WEIGHTS_FILE)
        check_state_dict(state, cfg, p / WEIGHTS_FILE)
        return state, cfg, export_meta(p, "export")
    state, cfg, meta = consolidate(p)
    # relative data / tokenizer paths resolve against the run, not this process's cwd (recorded_paths.py)
    return state, cfg, resolve_checkpoint_meta(meta, Path(meta["source"]))


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """-> (model in eval mode, model config, provenance dict)."""
    from pipeline.model import build_model

    state, cfg, meta = load_state(path)
    model = build_model(cfg, device="meta")
    model.to_empty(device=device)
    model.init_weights()          # recomputes buffers (OE row offsets); weights are overwritten below
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.to(dtype).eval(), cfg, meta
