"""What may differ between a checkpoint's run config and the config that resumes it.

Every checkpoint stores the resolved run config (config.yaml). On resume the two are compared key by key
(dotted names) before any process-group work, on every rank:
- keys that change the function the model computes, the data stream or the optimizer's internal state
  (every model.* key except the ones below, data.seq_len / train_split, train.seed, optim betas / eps /
  weight decays, parallel.table_optimizer) are refused with a one-line diff: the run would silently train
  another model, or DeepSpeed would restore the old value over the new one;
- layout changes that cannot resume yet (tp, ep, ZeRO stage, and the data-parallel size under ZeRO-1/2/3
  whose optimizer partitions are per rank) are refused, naming the recorded and the current layout;
- keys that may change are applied and printed as "changed on resume: key old -> new": the learning rate
  and its schedule (the schedule is a function of the step: a new lr, warm-up, decay length or floor takes
  effect at the resumed step; train.max_steps also moves the default decay end, schedule.decay_steps,
  which is printed with the lr that results at the resumed step), cadences (log, eval, checkpoint), batch
  sizes (the data position is a sample count, so a new global batch continues at the same sample; the lr
  schedule keeps counting steps), precision (parameters are fp32 in both), and run bookkeeping;
- a key not listed in either class is refused: a new config key is unsafe until it is classified here.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from pipeline.config.base import ConfigError

# Keys (fnmatch patterns over dotted names) that may change on resume.
MAY_CHANGE = (
    "run_dir", "model.name", "model.note", "model.activation_checkpointing",
    "data.path", "data.val_split", "data.verify", "data.tokenizer_sha256",
    "train.max_steps", "train.global_batch_size", "train.micro_batch_size", "train.resume",
    "train.hard_stop_step", "train.max_bad_steps", "train.lock_stale_s", "train.stop_signals",
    "train.max_duration_s",
    "optim.lr", "optim.oe_lr_multiplier", "optim.grad_clip", "schedule.*",
    "deepspeed.precision", "deepspeed.config_file", "deepspeed.backend", "deepspeed.timeout_s",
    "parallel.oe_shard_group",   # OE table rows are read back by row range on any split
    "log.*", "checkpoint.*", "eval.*",
)
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
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            continue
        (applied if _may_change(key) else refused).append(f"{key} {_show(a)} -> {_show(b)}")
    return refused, applied


def check_layout_change(saved: dict, saved_world: int | None, current: dict, world: int, ckpt: str) -> None:
    """Refuse a layout the checkpoint cannot be resumed on (yet), naming both layouts."""
    def layout(cfg: dict, w: int | None) -> dict:
        par, ds = cfg.get("parallel", {}), cfg.get("deepspeed", {})
        tp = int(par.get("tp", 1))
        return {"world": w, "tp": tp, "ep": int(par.get("ep", 1)), "zero_stage": int(ds.get("zero_stage", 0)),
                "dp": None if w is None else w // tp}
    was, now = layout(saved, saved_world), layout(current, world)
    problems = []
    for key in ("tp", "ep", "zero_stage"):
        if was[key] != now[key]:
            problems.append(f"{'deepspeed' if key == 'zero_stage' else 'parallel'}.{key} {was[key]} -> {now[key]}")
    if not problems and now["zero_stage"] > 0 and was["dp"] is not None and was["dp"] != now["dp"]:
        problems.append(f"data-parallel size {was['dp']} -> {now['dp']} (world {was['world']} -> {world}) "
                        f"with ZeRO-{now['zero_stage']}, whose optimizer state is partitioned per rank")
    if problems:
        raise ConfigError(f"train.resume: {ckpt} cannot resume on this layout: {'; '.join(problems)} "
                          f"(supported: the same tp/ep/ZeRO stage, and any world size with ZeRO-0; "
                          f"resume with the recorded layout)")


def check_resume(saved: dict, saved_world: int | None, current: dict, world: int, ckpt: str) -> list[str]:
    """Raise ConfigError for a resume that would change the model or needs an unsupported layout change;
    return the "key old -> new" lines of the changes that are applied."""
    check_layout_change(saved, saved_world, current, world, ckpt)
    refused, applied = config_changes(saved, current)
    if refused:
        raise ConfigError(f"train.resume: {ckpt} was trained with a different configuration: "
                          f"{'; '.join(refused)} (these keys cannot change on resume: set them back, or start "
                          f"a new run_dir)")
    return applied
