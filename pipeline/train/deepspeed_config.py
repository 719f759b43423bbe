"""The DeepSpeed config of a run: the user's own JSON (deepspeed.config_file) passed through, with the run
config filling only what it leaves out. A key the user set to a different value than the run config implies
is an error naming both (values of "auto", as in Hugging Face's integration, count as left out).

The optimizer and lr schedule always come from the run config (a client torch AdamW + our schedule), so a
JSON "optimizer" / "scheduler" section is refused rather than silently ignored; fp16 is refused too
(bf16 or fp32 only).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.base import ConfigError
from pipeline.config.run import RunConfig

# DeepSpeed otherwise prints a progress line every 10 steps; our own console line replaces it.
_QUIET_STEPS = 2**31 - 1


def gradient_accumulation_steps(cfg: RunConfig, world_size: int) -> int:
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size: {cfg.train.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size x data-parallel ranks = {cfg.train.micro_batch_size} x "
                          f"{world_size} = {per_step}")
    return cfg.train.global_batch_size // per_step


def precision_settings(precision: str) -> dict:
    """bf16 = DeepSpeed's `torch_autocast`: parameters, gradients (accumulated over micro-batches), the
    gradient reduction, clipping norm and optimizer state all stay fp32 and matmuls run in bf16 under
    torch.autocast. The same rule then holds for every layout and for the parameters stepped outside the
    engine (OE table and expert shards), which are fp32 tensors cast at use like the engine's own.
    DeepSpeed's `bf16.enabled` mode is not used: at ZeRO-0 it wraps the optimizer in FP16_UnfusedOptimizer,
    which accumulates gradients in bf16 and takes one zero-gradient AdamW step at start-up (the first real
    update is then ~0.73x lr), and it would cast only the engine's parameters. An empty
    lower_precision_safe_modules list keeps every gradient reduction in fp32."""
    if precision == "fp32":
        return {"bf16": {"enabled": False}}
    return {"bf16": {"enabled": False},
            "torch_autocast": {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}}


def run_deepspeed_settings(cfg: RunConfig, world_size: int) -> dict:
    """What the run config says, in DeepSpeed's vocabulary."""
    return {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        **precision_settings(cfg.deepspeed.precision),
        # Our optimizer is a plain torch AdamW; DeepSpeed tests ZeRO only with its own unless told.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }


def _merge(user: dict, ours: dict, path: str, source: str) -> None:
    for key, value in ours.items():
        dotted = f"{path}{key}"
        if key not in user or user[key] == "auto":
            user[key] = value
        elif isinstance(value, dict) and isinstance(user[key], dict):
            _merge(user[key], value, f"{dotted}.", source)
        elif user[key] != value and not (isinstance(value, float) and user[key] == value):
            raise ConfigError(f"{source}: {dotted}={user[key]!r} conflicts with the run config, which implies "
                              f"{value!r} (set the run config instead, or remove the key from the JSON)")


def build_deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    user: dict = {}
    source = "deepspeed config"
    if cfg.deepspeed.config_file:
        path = Path(cfg.deepspeed.config_file)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"deepspeed.config_file: {path} not found")
        try:
            user = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in user:
            raise ConfigError(f"{source}: '{key}' is not supported; the optimizer and lr schedule come from "
                              f"the run config's optim.* and schedule.* sections")
    if (user.get("fp16") or {}).get("enabled"):
        raise ConfigError(f"{source}: fp16.enabled is not supported; use deepspeed.precision=bf16 or fp32")
    _merge(user, run_deepspeed_settings(cfg, world_size), "", source)
    return user
