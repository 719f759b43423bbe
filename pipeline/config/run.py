"""Run configuration: one typed tree for a training run (model, data, optimiser, schedule, DeepSpeed,
logging, checkpoints, evaluation), loaded from YAML with dotted `key=value` overrides.

`model` may be written inline as a mapping, or as a path to a model YAML (configs/model/*.yaml), resolved
relative to the run config file first and then to the working directory; later `model.x=...` overrides
apply on top. The resolved tree is saved with every checkpoint, so a run is reproducible from it alone.
"""
from __future__ import annotations

import json
import math
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from pipeline.config.base import OWN_KEYS, ConfigError, apply_overrides, build_config, check, read_yaml, to_dict
from pipeline.config.model import ModelConfig
from pipeline.config.parallel import ParallelConfig

# Zero-shot tasks that eval.downstream_tasks accepts; pipeline/eval/tasks.py registers exactly these (it checks
# at import time). DOWNSTREAM_TASKS: the paper's five-task "downstream" mean, the default task list.
EVAL_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "mmlu_var", "sciq", "openbookqa")
DOWNSTREAM_TASKS = ("mmlu_var", "hellaswag", "arc_challenge", "arc_easy", "piqa")


_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class SourceConfig:
    """One source of a weighted mixture (pipeline/data/mixture.py): a data_prep folder and its share."""
    name: str = ""                      # metric tags val/<name>/loss, data/<name>/tokens
    path: str = ""                      # data_prep output folder holding manifest.json
    weight: float = 1.0                 # share of the training sequences (normalised over all sources)
    max_repetition: float | None = None  # most epochs of this source train.max_steps may use; null: no limit

    def validate(self) -> None:
        check(bool(_SOURCE_NAME.match(self.name)), "name",
              f"{self.name!r} must be letters, digits, '_', '.' or '-' (it names metric tags)")
        check(bool(self.path), "path", "is required (the data_prep output folder with manifest.json)")
        check(math.isfinite(self.weight) and self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        check(self.max_repetition is None or self.max_repetition > 0, "max_repetition",
              f"must be > 0 or null, got {self.max_repetition}")


@dataclass
class DataConfig:
    path: str = ""                      # data_prep output folder holding manifest.json (one source)
    # A weighted mixture instead of `path`: [{name, path, weight, max_repetition}], all from one tokenizer.
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 2048                 # tokens per packed training sequence
    train_split: str = "train"
    # Must exist in the manifest, like train_split. null = train without validation data, allowed only with
    # validation off (eval.every=0, eval.at_end=false): a missing split never silently means "no validation".
    val_split: str | None = "val"
    # "full": every shard's sha256 is checked at start (a flipped byte is caught before training reads it;
    # costs one read of the data per rank); "size": sizes and index structure only (fast, misses bit flips)
    verify: Literal["size", "full"] = "full"
    tokenizer_sha256: str | None = None  # expected tokenizer; a manifest built with another one is an error
    # The packing index (document and sample order per epoch): "cache" = built once per node and memory-mapped
    # (pipeline/data/index_cache.py); "memory" = computed per rank at each epoch (small data, read-only disks).
    index: Literal["cache", "memory"] = "cache"
    index_cache: str | None = None      # folder of the index cache; null: <source path>/index_cache

    def validate(self) -> None:
        check(bool(self.path) != bool(self.sources), "path",
              "is required (the data_prep output folder with manifest.json), or give data.sources (a weighted "
              "mixture)" if not self.path else
              "data.path and data.sources are both given: use one (data.sources: [{name, path, weight}])")
        check(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        for i, source in enumerate(self.sources):
            try:
                source.validate()
            except ConfigError as e:
                raise e.within(f"sources[{i}]") from None
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        check(not dup, "sources", f"source name {dup[0] if dup else ''!r} is used twice")
        check(not self.sources or sum(s.weight for s in self.sources) > 0, "sources",
              "every weight is 0: at least one source must have weight > 0")

    @property
    def primary_path(self) -> str:
        """The folder whose manifest names the tokenizer (all sources share it)."""
        return self.path or self.sources[0].path

    def source_list(self) -> list[SourceConfig]:
        """The sources to train on; `data.path` alone is one source of weight 1 (named "train")."""
        return list(self.sources) or [SourceConfig(name="train", path=self.path)]


@dataclass
class TrainConfig:
    max_steps: int = 1000               # optimizer steps; also the default schedule length
    global_batch_size: int = 8          # sequences per optimizer step, summed over data-parallel ranks
    micro_batch_size: int = 4           # sequences per forward pass per rank
    seed: int = 0                       # model init and the data order
    # "auto": the latest intact checkpoint in run_dir, if any; "never": a fresh run (refused when run_dir
    # already holds checkpoints); "restart": delete run_dir's checkpoints and start over; else a checkpoint
    # folder. What may change on resume: pipeline/train/resume_rules.py.
    resume: str = "auto"
    hard_stop_step: int | None = None   # stop (checkpointing) at this step without changing the schedule
    max_bad_steps: int = 5              # stop after this many consecutive steps with a NaN/Inf loss (each skipped)
    lock_stale_s: float = 300.0         # a run_dir lock of another host with no heartbeat this long is stale
    # Preemption: any of these signals, or this much wall time since start, ends the run after the current
    # step with a checkpoint and exit code 75 (pipeline/train/preemption.py).
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    max_duration_s: float | None = None

    def validate(self) -> None:
        check(self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        check(self.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        check(self.global_batch_size % self.micro_batch_size == 0, "global_batch_size",
              f"{self.global_batch_size} is not a multiple of train.micro_batch_size={self.micro_batch_size}")
        check(self.hard_stop_step is None or self.hard_stop_step >= 1, "hard_stop_step",
              f"must be >= 1, got {self.hard_stop_step}")
        check(self.max_bad_steps >= 1, "max_bad_steps", f"must be >= 1, got {self.max_bad_steps}")
        check(self.lock_stale_s > 0, "lock_stale_s", f"must be > 0 seconds, got {self.lock_stale_s}")
        check(self.max_duration_s is None or self.max_duration_s > 0, "max_duration_s",
              f"must be > 0 seconds or null, got {self.max_duration_s}")
        for name in self.stop_signals:
            check(name.startswith("SIG") and isinstance(getattr(signal, name, None), signal.Signals)
                  and name not in ("SIGKILL", "SIGSTOP"), "stop_signals",
                  f"{name!r} is not a signal a process can catch (e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGINT)")
        check(bool(self.resume), "resume", "must be auto, never, restart or a checkpoint folder")


@dataclass
class OptimConfig:
    lr: float = 4e-4                    # peak learning rate (OLMoE)
    betas: tuple[float, ...] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1           # on matrices; on norms/biases only with decay_norm_and_bias
    # OLMo's `decay_norm_and_bias` / `decay_embeddings` (pipeline/train/param_groups.py). OLMoE-1B-7B's
    # configs set both true; our defaults (false, false) are the common GPT/Llama recipe, used by every
    # experiment in docs/results.md. embedding_weight_decay is OLMo's decay_embeddings: the input token
    # embedding only (the output head is a matrix and always decayed, as in OLMo; the OE tables are not
    # embeddings here: oe_weight_decay).
    decay_norm_and_bias: bool = False   # also decay norm weights, biases and any other 1-D parameter
    embedding_weight_decay: bool = False  # also decay the input token embedding
    # Over-Encoding tables: the paper is silent. Default: same lr, no weight decay (what public ports use;
    # the tables are sparse, so decay would shrink rarely-touched rows on every step).
    oe_lr_multiplier: float = 1.0
    oe_weight_decay: float = 0.0
    grad_clip: float = 1.0              # global-norm clipping; 0 disables

    def validate(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              f"must be two numbers in [0, 1), got {list(self.betas)}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.oe_lr_multiplier > 0, "oe_lr_multiplier", f"must be > 0, got {self.oe_lr_multiplier}")
        check(self.oe_weight_decay >= 0, "oe_weight_decay", f"must be >= 0, got {self.oe_weight_decay}")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    # Formulas and the step convention: pipeline/train/lr_schedule.py.
    kind: Literal["cosine", "linear", "constant", "wsd", "inv_sqrt"] = "cosine"
    warmup_steps: int = 2500            # linear warm-up from 0 (OLMoE: 2,500)
    # End of the decay (cosine, linear) or of wsd's cooldown; default train.max_steps (wsd with an explicit
    # cooldown_start_step: cooldown_start_step + cooldown_steps). constant and inv_sqrt have none.
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1           # floor as a fraction of the peak (OLMoE: 0.1); inv_sqrt stops there too
    # A cooldown from the schedule's own lr at step cooldown_start_step down to the floor over cooldown_steps
    # updates. wsd: required length, starting by default at decay_steps - cooldown_steps. Other kinds: both
    # keys or neither (a cooldown added to the curve, e.g. when resuming a checkpoint for an annealed model).
    cooldown_steps: int | None = None
    cooldown_start_step: int | None = None
    cooldown_shape: Literal["linear", "1-sqrt"] | None = None   # default 1-sqrt when there is a cooldown

    def cooldown_window(self) -> tuple[int, int] | None:
        """(first step of the cooldown, its length), or None without one."""
        if self.kind == "wsd" and self.cooldown_start_step is None:
            if self.cooldown_steps is None or self.decay_steps is None:
                return None
            return self.decay_steps - self.cooldown_steps, self.cooldown_steps
        if self.cooldown_start_step is None or self.cooldown_steps is None:
            return None
        return self.cooldown_start_step, self.cooldown_steps

    def resolve_with(self, max_steps: int) -> None:
        if self.decay_steps is None and self.kind in ("cosine", "linear"):
            self.decay_steps = max_steps
        if self.decay_steps is None and self.kind == "wsd" and self.cooldown_steps is not None:
            explicit = self.cooldown_start_step is not None
            self.decay_steps = self.cooldown_start_step + self.cooldown_steps if explicit else max_steps
        if self.cooldown_shape is None and self.cooldown_window() is not None:
            self.cooldown_shape = "1-sqrt"

    def validate(self) -> None:
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.decay_steps is None or self.decay_steps >= 1, "decay_steps",
              f"must be >= 1, got {self.decay_steps}")
        check(self.decay_steps is None or self.kind not in ("constant", "inv_sqrt"), "decay_steps",
              f"kind={self.kind} has no decay to end: remove it (a cooldown is schedule.cooldown_start_step + "
              f"schedule.cooldown_steps)")
        check(self.kind != "inv_sqrt" or self.warmup_steps >= 1, "warmup_steps",
              "kind=inv_sqrt needs warmup_steps >= 1 (the lr after the warm-up is peak x sqrt(warmup_steps / n))")
        self._validate_cooldown()

    def _validate_cooldown(self) -> None:
        steps, start, d = self.cooldown_steps, self.cooldown_start_step, self.decay_steps
        check(steps is None or steps >= 1, "cooldown_steps", f"must be >= 1, got {steps}")
        check(steps is not None or self.kind != "wsd", "cooldown_steps",
              "kind=wsd needs the length of its cooldown (e.g. 20% of train.max_steps)")
        check(steps is None or start is not None or self.kind == "wsd", "cooldown_steps",
              f"with kind={self.kind} a cooldown also needs schedule.cooldown_start_step (where it starts)")
        check(start is None or steps is not None, "cooldown_start_step",
              "needs schedule.cooldown_steps (the length of the cooldown)")
        window = self.cooldown_window()
        check(self.cooldown_shape is None or window is not None, "cooldown_shape",
              f"there is no cooldown to shape (kind={self.kind} without schedule.cooldown_start_step)")
        if window is None:
            return
        first = "cooldown_start_step" if start is not None else "cooldown_steps"
        check(window[0] >= self.warmup_steps, first,
              f"the cooldown would start at step {window[0]}, before the end of the warm-up (warmup_steps "
              f"{self.warmup_steps}): it needs a start at or after the warm-up")
        if self.kind == "wsd" and start is not None and d is not None:
            check(d == start + steps, "decay_steps",
                  f"{d}, but the cooldown ends at cooldown_start_step + cooldown_steps = {start + steps}: "
                  f"remove decay_steps or set it to {start + steps}")
        if self.kind in ("cosine", "linear") and d is not None:
            check(start < d, "cooldown_start_step",
                  f"{start} is at or after decay_steps={d}, where the lr is already at the floor")


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    config_file: str | None = None      # a user's DeepSpeed JSON: passed through, we only fill what it omits
    backend: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl with CUDA, else gloo
    # A collective that does not complete within this many seconds (a rank died or hangs) ends every
    # waiting rank with an error instead of a hang.
    timeout_s: float = 1800.0

    def validate(self) -> None:
        check(self.timeout_s > 0, "timeout_s", f"must be > 0 seconds, got {self.timeout_s}")


@dataclass
class LogConfig:
    every: int = 10                     # steps between metric records / console lines
    tensorboard: bool = True            # run_dir/tensorboard/<run_dir name> (rank 0)
    histogram_every: int = 100          # expert-count histograms (multiple of `every` to be seen)
    oe_health: bool = True              # Over-Encoding table usage / norm / gradient metrics (pipeline/train/oe_health.py)
    peak_flops_per_device: float | None = None  # for MFU; null: MFU is not reported

    def validate(self) -> None:
        check(self.every >= 1, "every", f"must be >= 1, got {self.every}")
        check(self.histogram_every >= 1, "histogram_every", f"must be >= 1, got {self.histogram_every}")
        check(self.peak_flops_per_device is None or self.peak_flops_per_device > 0, "peak_flops_per_device",
              f"must be > 0, got {self.peak_flops_per_device}")


@dataclass
class CheckpointConfig:
    every: int = 1000                   # steps between checkpoints (run_dir/checkpoints/step_N); 0: never
    keep_last: int = 3                  # older checkpoints are deleted; 0 keeps all
    save_at_end: bool = True            # also checkpoint the final (or hard-stop) step
    # Also write the DeepSpeed-held parameters and their optimizer state in the layout-free format
    # (step_N/layout_free/), so the checkpoint resumes on any world size, tp, ep or ZeRO stage. Costs one more
    # copy of the dense fp32 state (12 bytes per dense parameter); the OE table and experts are not repeated.
    layout_free: bool = True

    def validate(self) -> None:
        check(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        check(self.keep_last >= 0, "keep_last", f"must be >= 0, got {self.keep_last}")


@dataclass
class EvalConfig:
    every: int = 500                    # steps between validation passes; 0: never (except at_end)
    batches: int = 20                   # micro-batches per validation pass, split over the dp ranks (same windows at any world size)
    at_end: bool = True
    # In-loop zero-shot evaluation (pipeline/eval): every N steps and at the end when N > 0; 0 = off.
    downstream_every: int = 0
    downstream_tasks: list[str] = field(default_factory=lambda: list(DOWNSTREAM_TASKS))
    downstream_limit: Optional[int] = 200    # questions per task (spread evenly over the split); null = all

    def validate(self) -> None:
        check(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        check(self.batches >= 1, "batches", f"must be >= 1, got {self.batches}")
        check(self.downstream_every >= 0, "downstream_every", f"must be >= 0, got {self.downstream_every}")
        check(self.downstream_limit is None or self.downstream_limit >= 1, "downstream_limit",
              f"must be >= 1 or null, got {self.downstream_limit}")
        if self.downstream_every:
            for t in self.downstream_tasks:
                check(t in EVAL_TASKS, "downstream_tasks",
                      f"unknown task {t!r} (allowed: {', '.join(sorted(EVAL_TASKS))})")


@dataclass
class RunConfig:
    # Model errors name keys as in a model YAML (`n_heads`, `over_encoding.k`), without `model.`.
    model: ModelConfig = field(metadata=OWN_KEYS)
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # tp / ep / OE sharding (docs/parallelism.md)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def resolve(self) -> None:
        """Derived defaults, filled by the loader before validation (and saved with every checkpoint)."""
        self.schedule.resolve_with(self.train.max_steps)

    def validate(self) -> None:
        check(bool(self.run_dir), "run_dir", "is required")
        check(not (self.eval.downstream_every and self.parallel.tp > 1), "eval.downstream_every",
              "in-loop zero-shot eval needs parallel.tp = 1 (the head is vocab-parallel); export the checkpoint "
              "and run launch/eval.py instead")
        # The one EP + ZeRO-3 check (it needs no world size). Layout checks that need the world size or the
        # model run at start-up (pipeline/train/parallel_run.py).
        check(not (self.parallel.ep > 1 and self.deepspeed.zero_stage == 3), "parallel.ep",
              f"expert parallelism (ep={self.parallel.ep}) with deepspeed.zero_stage=3 is not supported; use zero_stage 0-2")
        # Sections that must agree with each other. RoPE and the KV cache are sized by model.max_seq_len; a
        # training window longer than that would train positions the model config says it never sees.
        check(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
              f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}: lower data.seq_len or "
              f"raise model.max_seq_len")
        wants_val = [k for k, on in (("eval.every", self.eval.every > 0), ("eval.at_end", self.eval.at_end)) if on]
        check(self.data.val_split is not None or not wants_val, "data.val_split",
              f"null (no validation data) but {' and '.join(wants_val)} ask for validation: name the manifest's "
              f"validation split, or set eval.every=0 eval.at_end=false")
        # A decay shorter than the warm-up is allowed: such a (short) run simply never leaves the warm-up.


def _load_model_ref(ref: str, base_dir: Path | None) -> dict:
    candidates = ([base_dir / ref] if base_dir is not None else []) + [Path(ref)]
    for c in candidates:
        if c.is_file():
            return read_yaml(c)
    raise ConfigError(f"model: model config file {ref!r} not found (looked in {', '.join(map(str, candidates))})")


def _model_reference_opener(base_dir: Path | None) -> Callable[[tuple[str, ...], Any], Any]:
    """apply_overrides hook: `model.x=...` on a `model: path.yaml` reference first reads that file."""
    def open_section(keys: tuple[str, ...], value: Any) -> Any:
        if keys == ("model",) and isinstance(value, str):
            return _load_model_ref(value, base_dir)
        return value
    return open_section


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    data: dict | None = None) -> RunConfig:
    """YAML file (or dict) + `a.b=value` overrides -> resolved, validated RunConfig (model references read)."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    base_dir = Path(path).parent if path is not None else None
    apply_overrides(raw, list(overrides or []), open_section=_model_reference_opener(base_dir))
    if isinstance(raw.get("model"), str):
        raw["model"] = _load_model_ref(raw["model"], base_dir)
    if "model" not in raw:
        raise ConfigError("model: is required (a mapping or the path of a configs/model/*.yaml file)")
    _vocab_from_data(raw)
    return build_config(RunConfig, raw)


def _vocab_from_data(raw: dict) -> None:
    """model.vocab_size not given: the data's tokenizer (manifest.json of data.path or the first source) sets
    it, and padded_vocab_size, if not given either, rounds it up to 128: no vocabulary overrides needed."""
    if not isinstance(model := raw["model"], dict) or "vocab_size" in model:
        return
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    sources = data.get("sources") if isinstance(data.get("sources"), list) else []
    folder = data.get("path") or (sources[0].get("path") if sources and isinstance(sources[0], dict) else None)
    if not folder or not isinstance(folder, str):
        return   # data.path's own validation names what is missing
    manifest = Path(folder) / "manifest.json"
    try:
        vocab = int(json.loads(manifest.read_text())["tokenizer"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError.at("model.vocab_size", f"not given, and {manifest}, where it is then read from, is not "
                             f"readable ({type(e).__name__}): prepare the data first or give model.vocab_size") from None
    model["vocab_size"] = vocab
    model.setdefault("padded_vocab_size", -(-vocab // 128) * 128)


def run_config_to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (tuples as lists so that it reloads with safe_load)."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x
    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)

