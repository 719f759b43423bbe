"""The DeepSpeed config of a run: the user's own JSON (deepspeed.config_file) passed through, with the run
config filling only what it leaves out. A key the user set to a different value than the run config implies
is an error naming both (values of "auto", as in Hugging Face's integration, count as left out).

The optimizer and lr schedule always come from the run config (a client torch AdamW + our schedule), so a
JSON "optimizer" / "scheduler" section is refused rather than silently ignored; fp16 is refused too
(bf16 or fp32 only).

The JSON's shape is checked by DeepSpeed's own config classes before anything else reads it
(`check_deepspeed_json`): a section of the wrong type (`"fp16": true`) or an unknown key inside a section
would otherwise surface as a TypeError or a pydantic traceback from deepspeed.initialize, and an unknown
top-level key is ignored by DeepSpeed without a word. Each becomes one ConfigError line naming file and key.
"""
from __future__ import annotations

import collections.abc
import difflib
import functools
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


# The smallest config DeepSpeedConfig accepts on its own; each user section is checked on top of it.
_MINIMAL = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
# Read by DeepSpeedConfig only once a process group exists (so a recording run without one misses it).
_KEYS_READ_WITH_A_GROUP = frozenset({"sequence_parallel_size"})


class _RecordingDict(dict):
    """A dict that remembers every key looked up in it (also through `key in d.keys()`). DeepSpeedConfig
    copies it with copy.copy, which shares the instance __dict__ and so the `seen` set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["seen"] = set()

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self):
        outer = self

        class Keys(collections.abc.KeysView):
            def __contains__(self, key):
                outer.seen.add(key)
                return dict.__contains__(outer, key)
        return Keys(self)


@functools.lru_cache(maxsize=1)
def deepspeed_top_level_keys() -> frozenset[str]:
    """Every top-level key the installed DeepSpeed's config reader looks at (recorded, not a hand-kept list,
    so it follows the DeepSpeed version)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    recorder = _RecordingDict(_MINIMAL)
    DeepSpeedConfig(recorder)
    return frozenset(recorder.seen) | _KEYS_READ_WITH_A_GROUP


def _deepspeed_reads(config: dict) -> None:
    """Run DeepSpeed's own config reader (its pydantic models and getters) on `config`; raises what it raises."""
    from deepspeed.runtime.config import DeepSpeedConfig

    DeepSpeedConfig(dict(config))


def _describe(key: str, value, error: Exception) -> str:
    """One line for what DeepSpeed's reader raised on section `key`."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = error.errors()
        first = problems[0]
        loc = ".".join(str(part) for part in first["loc"])
        where = loc if loc.split(".")[0] == key else f"{key}.{loc}" if loc else key
        more = f" ({len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{where}: {first['msg']} (got {json.dumps(first.get('input'), default=str)}){more}"
    if not isinstance(value, dict):
        try:
            _deepspeed_reads({**_MINIMAL, key: {}})
            return f"{key}: must be a JSON object (a section), got {json.dumps(value)}"
        except Exception:   # not a section either: report DeepSpeed's own words below
            pass
    text = str(error).strip().splitlines()
    return f"{key}: DeepSpeed cannot read it ({type(error).__name__}: {text[0] if text else ''})"


def _autos_filled(user, ours):
    """`user` with every "auto" that the run config fills (`ours`, same nesting) replaced by our value, as
    _merge will do: those are not the user's to get right."""
    if not isinstance(user, dict) or not isinstance(ours, dict):
        return user
    return {k: ours[k] if v == "auto" and k in ours else _autos_filled(v, ours.get(k)) for k, v in user.items()}


def check_deepspeed_json(user: dict, source: str, ours: dict | None = None) -> None:
    """Unknown top-level keys and sections DeepSpeed would reject, as one ConfigError line each (the first).
    `ours`: what the run config fills in (run_deepspeed_settings); an "auto" it replaces is not checked."""
    import deepspeed

    known = deepspeed_top_level_keys()
    for key in user:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}: DeepSpeed {deepspeed.__version__} does not read "
                              f"it and would ignore it{hint}")
    ours = ours or {}
    for key, value in _autos_filled(user, ours).items():
        if key in ours and not isinstance(ours[key], dict):
            continue   # a scalar we set too (batch sizes, clipping): _merge requires the user's to equal ours
        try:
            _deepspeed_reads({**_MINIMAL, key: value})
        except Exception as e:   # whatever DeepSpeed raises on this one section is a problem of the section
            raise ConfigError(f"{source}: {_describe(key, value, e)}") from None


def _json_object_without_duplicates(path: Path):
    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise ConfigError(f"{path}: duplicate key {key!r} in a JSON object; JSON readers keep only the "
                                  f"last value: remove one")
            out[key] = value
        return out
    return pairs


def build_deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    user: dict = {}
    source = "deepspeed config"
    if cfg.deepspeed.config_file:
        path = Path(cfg.deepspeed.config_file)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"deepspeed.config_file: {path} not found")
        try:
            user = json.loads(path.read_text(), object_pairs_hook=_json_object_without_duplicates(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in user:
            raise ConfigError(f"{source}: '{key}' is not supported; the optimizer and lr schedule come from "
                              f"the run config's optim.* and schedule.* sections")
    ours = run_deepspeed_settings(cfg, world_size)
    check_deepspeed_json(user, source, ours)
    if (user.get("fp16") or {}).get("enabled"):
        raise ConfigError(f"{source}: fp16.enabled is not supported; use deepspeed.precision=bf16 or fp32")
    _merge(user, ours, "", source)
    # Sections that are each fine may still contradict each other. The batch product is left to DeepSpeed's
    # own data-parallel size (with tp it is not the process group's size, which the reader would use).
    try:
        _deepspeed_reads({k: v for k, v in user.items() if k != "train_batch_size"})
    except Exception as e:
        text = str(e).strip().splitlines()
        raise ConfigError(f"{source}: DeepSpeed rejects the combined config ({type(e).__name__}: "
                          f"{text[0] if text else ''})") from None
    return user
