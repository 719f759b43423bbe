"""Which checkpoint a run resumes from, and whether it may (train.resume).

Before any collective, every rank runs `precheck_resume`: the first candidate whose config.yaml and
trainer_state.json match their checksums is compared with this run's config and layout
(pipeline/train/resume_rules.py), so a resume that would change the model fails at once with one line.
After the process group exists, `resume_trainer` verifies every file of the candidate across the ranks; a
damaged candidate (train.resume=auto) is skipped with a warning naming it and the checkpoint used instead.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from pipeline.config.base import ConfigError, from_dict
from pipeline.config.run import RunConfig, ScheduleConfig, run_config_to_yaml
from pipeline.train.checkpoint import (CONFIG_FILE, DS_TAG, STATE_FILE, checkpoint_root, complete_checkpoints,
                                       resume_candidates)
from pipeline.train.checkpoint_manifest import CheckpointDamaged, verify_checkpoint, verify_files
from pipeline.train.layout_free import LAYOUT_FREE_DIR, STATE_JSON
from pipeline.train.lr_schedule import check_resume_cooldown, lr_factor
from pipeline.train.resume_rules import check_resume

SCHEDULE_KEYS = ("optim.lr", "optim.oe_lr_multiplier", "schedule.", "train.max_steps")


def _read_saved(ckpt: Path) -> tuple[dict, dict]:
    verify_files(ckpt, [CONFIG_FILE, STATE_FILE])
    try:
        saved = yaml.safe_load((ckpt / CONFIG_FILE).read_text())
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise CheckpointDamaged(f"{ckpt}: unreadable {CONFIG_FILE} / {STATE_FILE} ({type(e).__name__})") from None
    if not isinstance(saved, dict) or not isinstance(state, dict) or "step" not in state:
        raise CheckpointDamaged(f"{ckpt}: {CONFIG_FILE} / {STATE_FILE} do not hold a run config and a step")
    return saved, state


def _saved_schedule(saved: dict) -> tuple[ScheduleConfig, float] | None:
    try:
        return from_dict(ScheduleConfig, saved["schedule"], prefix="schedule"), float(saved["optim"]["lr"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return None   # an older config without these keys: the key lines say what changed


def _schedule_lines(saved: dict, cfg: RunConfig, step: int, ckpt: Path) -> list[str]:
    """The lr of the next update before -> after, and the new cooldown; ConfigError for a new cooldown that
    does not continue the checkpoint's lr curve (pipeline/train/lr_schedule.py)."""
    old = _saved_schedule(saved)
    if old is None:
        return []
    schedule, lr = old
    before, after = lr * lr_factor(step, schedule), cfg.optim.lr * lr_factor(step, cfg.schedule)
    cooldown = check_resume_cooldown(schedule, lr, cfg.schedule, cfg.optim.lr, step, str(ckpt))
    return [f"lr of the next update (step {step + 1}) {before:.4g} -> {after:.4g}"] + ([cooldown] if cooldown else [])


def admissible(ckpt: Path, cfg: RunConfig, world: int) -> tuple[list[str], list[str]]:
    """Not collective. (The "key old -> new" changes this resume applies, the layout changes it re-partitions
    for); ConfigError if it may not happen, CheckpointDamaged if the checkpoint's config or state fails its
    checksums."""
    saved, state = _read_saved(ckpt)
    current = yaml.safe_load(run_config_to_yaml(cfg))
    has_layout_free = (ckpt / LAYOUT_FREE_DIR / STATE_JSON).is_file()
    changes, layout = check_resume(saved, state.get("world_size"), current, world, str(ckpt), has_layout_free)
    if not layout and not (ckpt / DS_TAG).is_dir():
        if not has_layout_free:
            raise CheckpointDamaged(f"{ckpt}: neither DeepSpeed's {DS_TAG}/ nor {LAYOUT_FREE_DIR}/ is there")
        layout = [f"{ckpt.name} holds only the layout-free state (written by pipeline.train.reshard)"]
    if any(c.startswith(SCHEDULE_KEYS) for c in changes):
        changes.extend(_schedule_lines(saved, cfg, int(state["step"]), ckpt))
    return changes, layout


def precheck_resume(cfg: RunConfig, world: int) -> None:
    """Not collective: refuse a resume that may not happen, and train.resume=never over existing checkpoints."""
    root = checkpoint_root(cfg.run_dir)
    if cfg.train.resume == "never" and complete_checkpoints(root):
        newest = complete_checkpoints(root)[-1][1]
        raise ConfigError(f"train.resume: never, but {root} already holds checkpoints (newest {newest.name}): "
                          f"use train.resume=restart to delete them and start over, or another run_dir")
    for ckpt in resume_candidates(cfg.train.resume, cfg.run_dir):
        try:
            admissible(ckpt, cfg, world)
            return
        except CheckpointDamaged:
            if cfg.train.resume != "auto":
                raise
            # resume_trainer warns about it and falls back, with every rank agreeing


def start_over(cfg: RunConfig) -> None:
    """train.resume=restart (rank 0, run_dir locked): the old checkpoints go; the metrics history is
    restarted by the metrics writer of a fresh run."""
    root = checkpoint_root(cfg.run_dir)
    if root.is_dir():
        print(f"train.resume=restart: deleting {root}", file=sys.stderr, flush=True)
        shutil.rmtree(root)


def resume_trainer(trainer, cfg: RunConfig, world: int, rank: int) -> Path | None:
    """Collective. Resume from the newest intact admissible checkpoint; returns it (None: a fresh run)."""
    skipped: list[str] = []
    for ckpt in resume_candidates(cfg.train.resume, cfg.run_dir):
        try:
            changes, layout = admissible(ckpt, cfg, world)
            verify_checkpoint(ckpt, collective=True)
        except CheckpointDamaged as e:
            if cfg.train.resume != "auto":
                raise
            skipped.append(f"{ckpt.name} ({e})")
            continue
        if rank == 0:
            for s in skipped:
                print(f"warning: checkpoint {s} is damaged; resuming from {ckpt} instead", file=sys.stderr,
                      flush=True)
            for c in changes:
                print(f"changed on resume: {c}", flush=True)
            for c in layout:
                print(f"layout changed on resume: {c} (re-partitioning the layout-free state)", flush=True)
        trainer.resume_from(ckpt, repartition=bool(layout))
        return ckpt
    if skipped:
        raise CheckpointDamaged(f"{checkpoint_root(cfg.run_dir)}: no intact checkpoint to resume from: "
                                f"{'; '.join(skipped)}")
    return None
