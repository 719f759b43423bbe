"""Consolidate a training checkpoint into ONE safetensors file plus the model config, loadable on one CPU
process without DeepSpeed or torch.distributed.

Output folder:
    model.safetensors   every parameter of the model, fp32 (or --dtype), names = OLMoE.state_dict() keys
    config.yaml         the model config (same schema as configs/model/*.yaml)
    export.json         provenance: source checkpoint, step, format, parameter count
The folder is written under a temporary name and renamed into place, so it is complete or absent.

Parallel layouts: DeepSpeed reassembles ZeRO-1/2/3 partitions itself. A layout that stores a parameter as
pieces DeepSpeed does not know about registers a merger with `register_merger`: it receives the raw state
dict and the checkpoint folder and returns the state dict with those pieces replaced by full tensors (e.g.
expert-parallel experts saved as per-rank [E/ep, ...] slices, or Over-Encoding table rows sharded over data-
parallel ranks). The result is always checked key by key and shape by shape against the model built from
the saved config, so an unmerged shard fails with a one-line error naming the parameter.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from pipeline.config.base import to_dict
from pipeline.config.model import ModelConfig
from pipeline.data.atomic_io import fsync_dir
from pipeline.export.checkpoint_reader import (CheckpointError, read_checkpoint_info, read_deepspeed_weights,
                                               resolve_checkpoint)
from pipeline.train.checkpoint_manifest import CheckpointDamaged, verify_checkpoint, write_manifest

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.yaml"
EXPORT_INFO_FILE = "export.json"
FORMAT = "over-tokenized-olmoe/v1"

Merger = Callable[[dict[str, torch.Tensor], Path], dict[str, torch.Tensor]]
_MERGERS: list[Merger] = []


def register_merger(fn: Merger) -> Merger:
    """Add a merger for a sharded layout (see module docstring); usable as a decorator."""
    _MERGERS.append(fn)
    return fn


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the model `cfg` describes (built on the meta device: no memory)."""
    from pipeline.model import build_model

    return {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}


def check_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str | Path) -> None:
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    if missing:
        raise CheckpointError(f"{source}: parameter {missing[0]} missing ({len(missing)} missing in all)")
    extra = [k for k in state if k not in want]
    if extra:
        raise CheckpointError(f"{source}: unexpected parameter {extra[0]} ({len(extra)} unknown in all)")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{source}: parameter {k} has shape {tuple(state[k].shape)}, the config needs "
                                  f"{shape} (a sharded layout without a registered merger?)")


def consolidate(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """Checkpoint (run / checkpoints / step_N folder) -> (full fp32 state dict, model config, provenance)."""
    step_dir = resolve_checkpoint(path)
    try:   # every file against its checksum before any reader parses one
        verify_checkpoint(step_dir)
    except CheckpointDamaged as e:
        raise CheckpointError(str(e)) from None
    info = read_checkpoint_info(step_dir)
    state = read_deepspeed_weights(step_dir)
    for merge in _MERGERS:
        state = merge(state, step_dir)
    check_state_dict(state, info.model_cfg, step_dir)
    from pipeline.data.tokenizer import tokenizer_record_from_run_config

    meta = {"format": FORMAT, "source": str(step_dir.resolve()), "step": info.step,
            "parameters": int(sum(v.numel() for v in state.values())),
            "tokenizer": tokenizer_record_from_run_config(info.run_config),
            "data": _data_record(info.run_config.get("data") or {})}
    return state, info.model_cfg, meta


def model_config_yaml(cfg: ModelConfig) -> str:
    # the JSON round trip turns tuples into lists, so the YAML reloads with safe_load
    return yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False)


def write_folder_atomically(out_dir: str | Path, files: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call files(tmp_dir) to fill a temporary sibling folder, then rename it to out_dir."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files(tmp)
        write_manifest(tmp, collective=False)     # loaders verify every file against it
        tmp.chmod(0o755)                          # mkdtemp creates 0700; an export is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_consolidated(out_dir: str | Path, state: dict[str, torch.Tensor], cfg: ModelConfig, meta: dict,
                      dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    def files(tmp: Path) -> None:
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "step": str(meta.get("step"))})
        (tmp / MODEL_CONFIG_FILE).write_text(model_config_yaml(cfg))
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps({**meta, "dtype": str(dtype).replace("torch.", "")},
                                                       indent=1) + "\n")
    return write_folder_atomically(out_dir, files, overwrite)


def _data_record(data: dict) -> dict:
    """path, seq_len, val_split of the run's data; a mixture's path is its first source's (every source shares
    the tokenizer, which is what readers look up through this path)."""
    record = {k: data.get(k) for k in ("path", "seq_len", "val_split")}
    if not record["path"] and data.get("sources"):
        record["path"] = data["sources"][0].get("path")
    return record
