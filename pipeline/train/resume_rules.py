"""What may differ between a checkpoint's run config and the config that resumes it.

Every checkpoint stores the resolved run config (config.yaml). On resume the two are compared key by key
(dotted names) before any process-group work, on every rank:
- keys that change the function the model computes, the data stream or the optimizer's internal state
  (every model.* key except the ones below, data.seq_len / train_split, train.seed, optim betas / eps /
  weight decays, parallel.table_optimizer) are refused with a one-line diff: the run would silently train
  another model, or DeepSpeed would restore the old value over the new one;
- layout changes (tp, ep, ZeRO stage, and the data-parallel size under ZeRO-1/2/3 whose optimizer partitions
  are per rank) resume by re-partitioning the checkpoint's layout-free state (pipeline/train/layout_free.py);
  a checkpoint without it (checkpoint.layout_free false) is refused, naming both layouts;
- keys that may change are applied and printed as "changed on resume: key old -> new": the learning rate
  and its schedule (the schedule is a function of the step: a new lr, warm-up, decay length or floor takes
  effect at the resumed step; train.max_steps also moves the default decay end, schedule.decay_steps,
  which is printed with the lr that results at the resumed step; a new or moved cooldown must start at the
  resumed step or later and continue the checkpoint's lr: lr_schedule.check_resume_cooldown), cadences
  (log, eval, checkpoint), batch sizes (the data position is a sample count, so a new global batch continues
  at the same sample; the lr schedule keeps counting steps), the data mixture (new weights or sources apply
  from the resumed sample; every source continues after the sequences it already gave), precision (parameters are fp32 in both), and
  run bookkeeping;
- a key not listed in either class is refused: a new config key is unsafe until it is classified here.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from pipeline.config.base import ConfigError

# Keys (fnmatch patterns over dotted names) that may change on resume.
MAY_CHANGE = (
    "run_dir", "model.name", "model.note", "model.activation_checkpointing",
    "model.compile",   # how the blocks run, not what they compute
    "data.path", "data.val_split", "data.verify", "data.tokenizer_sha256", "data.index", "data.index_cache",
    "data.sources",   # a new mixture applies from the resumed sample on (pipeline/data/mixture.py)
    "train.max_steps", "train.global_batch_size", "train.micro_batch_size", "train.resume",
    "train.hard_stop_step", "train.max_bad_steps", "train.lock_stale_s", "train.stop_signals",
    "train.max_duration_s",
    "optim.lr", "optim.oe_lr_multiplier", "optim.grad_clip", "schedule.*",
    "deepspeed.precision", "deepspeed.config_file", "deepspeed.backend", "deepspeed.timeout_s",
    "parallel.oe_shard_group",   # OE table rows are read back by row range on any split
    "parallel.oe_prefetch",      # when the OE lookup's exchange runs, not what it returns
    "log.*", "checkpoint.*", "eval.*",
)
# Keys added after checkpoints were written, with the value that reproduces what a config without them did:
# a saved config that lacks the key compares as that value (issue 19's recipe options).
ADDED_KEY_DEFAULTS = {"model.mtp_aux_loss": "pooled", "model.over_decoding.output_norm": "shared",
                      "optim.decay_norm_and_bias": False}
# Keys checked by the layout rule below rather than by name.
LAYOUT_KEYS = ("parallel.tp", "parallel.ep", "deepspeed.zero_stage")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _may_change(key: str) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in MAY_CHANGE)


def _show(value) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, applied): "key old -> new" for every differing dotted key of two plain config trees."""
    old, new = flatten(saved), flatten(current)
    refused, applied = [], []
    for key in sorted(set(old) | set(new)):
        if key in LAYOUT_KEYS:
            continue
        a, b = old.get(key, ADDED_KEY_DEFAULTS.get(key, "<absent>")), new.get(key, "<absent>")
        if a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            continue
        (applied if _may_change(key) else refused).append(f"{key} {_show(a)} -> {_show(b)}")
    return refused, applied


def layout_of(cfg: dict, world: int | None) -> dict:
    par, ds = cfg.get("parallel", {}), cfg.get("deepspeed", {})
    tp = int(par.get("tp", 1))
    return {"world": world, "tp": tp, "ep": int(par.get("ep", 1)), "zero_stage": int(ds.get("zero_stage", 0)),
            "dp": None if world is None else world // tp}


def layout_changes(saved: dict, saved_world: int | None, current: dict, world: int) -> list[str]:
    """What differs between the saved and the current layout in a way DeepSpeed's own per-rank files cannot
    follow: tp, ep, the ZeRO stage, or the data-parallel size under ZeRO-1/2/3 (partitioned optimizer state).
    (A new world size at ZeRO-0 reloads DeepSpeed's replicated files; the OE rows re-split by range.)"""
    was, now = layout_of(saved, saved_world), layout_of(current, world)
    changes = [f"{'deepspeed' if k == 'zero_stage' else 'parallel'}.{k} {was[k]} -> {now[k]}"
               for k in ("tp", "ep", "zero_stage") if was[k] != now[k]]
    if (was["zero_stage"] > 0 or now["zero_stage"] > 0) and was["dp"] is not None and was["dp"] != now["dp"]:
        changes.append(f"data-parallel size {was['dp']} -> {now['dp']} (world {was['world']} -> {world})")
    return changes


def check_layout_change(saved: dict, saved_world: int | None, current: dict, world: int, ckpt: str,
                        has_layout_free: bool) -> list[str]:
    """The layout changes of this resume (empty: the same layout); refused when the checkpoint holds no
    layout-free state to re-partition from."""
    changes = layout_changes(saved, saved_world, current, world)
    if changes and not has_layout_free:
        raise ConfigError(f"train.resume: {ckpt} cannot resume on this layout: {'; '.join(changes)}: it was saved "
                          f"without layout-free state (checkpoint.layout_free false); resume with the recorded "
                          f"layout")
    return changes


def check_resume(saved: dict, saved_world: int | None, current: dict, world: int, ckpt: str,
                 has_layout_free: bool = False) -> tuple[list[str], list[str]]:
    """Raise ConfigError for a resume that would change the model or needs an unsupported layout change;
    return (the "key old -> new" lines of the changes that are applied, the layout changes)."""
    layout = check_layout_change(saved, saved_world, current, world, ckpt, has_layout_free)
    refused, applied = config_changes(saved, current)
    if refused:
        raise ConfigError(f"train.resume: {ckpt} was trained with a different configuration: "
                          f"{'; '.join(refused)} (these keys cannot change on resume: set them back, or start "
                          f"a new run_dir)")
    return applied, layout
