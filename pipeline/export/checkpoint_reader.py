"""Find a training checkpoint and read its full (unsharded) fp32 weights on one CPU process.

Accepted paths: a run folder (its checkpoints/latest), a run's checkpoints/ folder, or one step_N folder
(layout: pipeline/train/checkpoint.py). Weights come from DeepSpeed's own files:
- ZeRO-1/2 (and bf16 ZeRO-0, whose BF16_Optimizer also keeps fp32 partitions): the fp32 master weights are
  reassembled from every rank's optimizer partition by DeepSpeed's
  `zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint` (which reads them with its own loader);
- plain ZeRO-0: the full module state in mp_rank_00_model_states.pt, read with torch.load(weights_only=True).
ZeRO-3 also goes through zero_to_fp32. Layouts that split a parameter across files that DeepSpeed does not
know about (expert-parallel experts, row-sharded Over-Encoding tables) are merged afterwards by the
registered mergers of pipeline/export/consolidate.py, before the result is checked against the model.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig, load_model_config
from pipeline.train.checkpoint import CONFIG_FILE, DS_TAG, LATEST, STATE_FILE
from pipeline.train.checkpoint_safety import UnsafeCheckpointError, check_checkpoint_is_safe


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; one line naming the path and what is wrong."""


@dataclass
class CheckpointInfo:
    path: Path                      # the step_N folder
    step: int | None
    model_cfg: ModelConfig
    run_config: dict                # the resolved run config as saved (plain YAML data)


def resolve_checkpoint(path: str | Path) -> Path:
    """Run folder / checkpoints folder / step_N folder -> the step_N folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    for root in (p, p / "checkpoints"):
        pointer = root / LATEST
        if (root / STATE_FILE).is_file() and (root / CONFIG_FILE).is_file():
            return root
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if not (target / STATE_FILE).is_file():
                raise CheckpointError(f"{pointer}: points to {target.name}, which is not a complete checkpoint")
            return target
    raise CheckpointError(f"{p}: not a checkpoint (no {STATE_FILE} + {CONFIG_FILE}, and no latest pointer in "
                          f"{p} or {p / 'checkpoints'})")


def read_checkpoint_info(step_dir: Path) -> CheckpointInfo:
    cfg_path = step_dir / CONFIG_FILE
    try:
        run_cfg = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read the saved run config ({e})") from None
    if not isinstance(run_cfg, dict) or not isinstance(run_cfg.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: no `model` mapping in the saved run config")
    try:
        model_cfg = load_model_config(data=run_cfg["model"])
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    step = None
    state_path = step_dir / STATE_FILE
    if state_path.is_file():
        step = json.loads(state_path.read_text()).get("step")
    return CheckpointInfo(step_dir, step, model_cfg, run_cfg)


def _has_zero_partitions(ds_dir: Path) -> bool:
    return any(ds_dir.glob("*zero_pp_rank_*_optim_states.pt")) or any(ds_dir.glob("*zero_pp_rank_*_model_states.pt"))


def read_deepspeed_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the DeepSpeed checkpoint under step_dir/model (see module docstring)."""
    ds_dir = step_dir / DS_TAG
    if not ds_dir.is_dir():
        raise CheckpointError(f"{ds_dir}: DeepSpeed checkpoint folder missing")
    try:  # zero_to_fp32 unpickles with weights_only=False: scan its files first
        check_checkpoint_is_safe(ds_dir)
    except UnsafeCheckpointError as e:
        raise CheckpointError(str(e)) from None
    if _has_zero_partitions(ds_dir):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()):   # it prints progress lines per file
            try:
                state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=DS_TAG)
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise CheckpointError(f"{ds_dir}: DeepSpeed could not consolidate the ZeRO partitions ({e})") from None
        return {k: v.float() for k, v in state.items()}
    model_file = ds_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise CheckpointError(f"{model_file}: missing (neither ZeRO partitions nor a ZeRO-0 model file)")
    saved = torch.load(model_file, map_location="cpu", weights_only=True)
    module = saved.get("module") if isinstance(saved, dict) else None
    if not module:
        raise CheckpointError(f"{model_file}: no `module` weights inside")
    return {k: v.float() for k, v in module.items()}
