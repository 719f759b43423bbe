"""Read a HF export folder (hf_export.py) back as our model's state dict, so launch/eval.py and
launch/generate.py take `--checkpoint EXPORT` for it as for a consolidated export: the files are checked
against the export's checksums.json, the model config comes from config.json (PIPELINE_CONFIG_KEY), the
tensors are renamed back (hf_layout.from_hf) and checked name by name and shape by shape, and the tokenizer
record of export.json names the byte-identical copy of the trained tokenizer inside the folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig, load_model_config
from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import MODEL_CONFIG_FILE, check_state_dict
from pipeline.export.export_folder import export_meta, read_weights, verify_export
from pipeline.export.hf_layout import NATIVE, REMOTE, from_hf
from pipeline.export.hf_olmoe import HF_WEIGHTS_FILE, PIPELINE_CONFIG_KEY

HF_CONFIG_FILE = "config.json"


def is_hf_export(path: str | Path) -> bool:
    p = Path(path)
    return (p / HF_CONFIG_FILE).is_file() and (p / HF_WEIGHTS_FILE).is_file() and not (p / MODEL_CONFIG_FILE).is_file()


def _model_config(config_file: Path) -> tuple[ModelConfig, str]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_file}: cannot read ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get(PIPELINE_CONFIG_KEY), dict):
        raise CheckpointError(f"{config_file}: no {PIPELINE_CONFIG_KEY} (not written by launch/export.py --format hf)")
    try:
        cfg = load_model_config(data=config[PIPELINE_CONFIG_KEY])
    except ConfigError as e:
        raise CheckpointError(f"{config_file}: {PIPELINE_CONFIG_KEY}.{e}") from None
    return cfg, REMOTE if config.get("model_type") == "over_tokenized_olmoe" else NATIVE


def load_hf_state(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(our state dict, model config, provenance) of a HF export folder."""
    p = Path(path)
    verify_export(p)
    cfg, layout = _model_config(p / HF_CONFIG_FILE)
    tensors = read_weights(p / HF_WEIGHTS_FILE)
    try:
        state = from_hf(tensors, cfg, layout, str(p / HF_WEIGHTS_FILE))
    except KeyError as e:
        raise CheckpointError(e.args[0]) from None
    check_state_dict(state, cfg, p / HF_WEIGHTS_FILE)
    return state, cfg, export_meta(p, "hf-export")
