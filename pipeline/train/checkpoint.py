"""Checkpoints: run_dir/checkpoints/step_N, written atomically, with a `latest` pointer updated last.

Layout of one checkpoint:
    step_N/model/            DeepSpeed save_checkpoint (module, optimizer / ZeRO partitions, lr scheduler)
    step_N/rng/rank_R.pt     every RNG of rank R (torch.save of tensors/ints only: loaded weights_only)
    step_N/trainer_state.json step, data-loader position, data identity, world size (plain JSON)
    step_N/config.yaml       the resolved run config
Every rank writes into checkpoints/.tmp_step_N; once all have finished, rank 0 renames it to step_N (an
atomic rename, so a half-written checkpoint never carries a step_N name) and then rewrites `latest`.
Resume reads `latest`, or, if the process died between the rename and the pointer update, the newest
complete step_N. Our own files are JSON/YAML or weights_only tensors; only DeepSpeed's own files go through
DeepSpeed's loader.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.data.atomic_io import atomic_write_bytes, fsync_dir
from pipeline.train.rng_state import capture_rng_state, restore_rng_state

DS_TAG = "model"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first."""
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / STATE_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def save_checkpoint(engine, run_dir: str | Path, step: int, trainer_state: dict, config_yaml: str,
                    keep_last: int) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder."""
    root = checkpoint_root(run_dir)
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    rank = _rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_step_*"):  # leftovers of a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={}, save_latest=False)
    torch.save(capture_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        (tmp / CONFIG_FILE).write_text(config_yaml)
        # Written last inside the folder: its presence marks a complete checkpoint.
        atomic_write_bytes(tmp / STATE_FILE, json.dumps(trainer_state, indent=1).encode())
        if final.exists():  # re-saving a step after a resume from an earlier checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
        atomic_write_bytes(root / LATEST, f"{final.name}\n".encode())
        if keep_last > 0:
            for _, old in complete_checkpoints(root)[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / STATE_FILE).is_file():
            return target
    complete = complete_checkpoints(root)
    return complete[-1][1] if complete else None


def resolve_resume_path(resume: str, run_dir: str | Path) -> Path | None:
    """train.resume: "auto" -> latest in run_dir (None on a fresh run); "never" -> None; else a folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return find_latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())


def load_checkpoint(engine, ckpt: Path) -> dict:
    """Collective. Restores module, optimizer, lr scheduler and this rank's RNGs; returns the trainer state."""
    load_path, _ = engine.load_checkpoint(str(ckpt), tag=DS_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"{ckpt}: DeepSpeed could not load the checkpoint under tag {DS_TAG!r}")
    rng_file = ckpt / "rng" / f"rank_{_rank():05d}.pt"
    if rng_file.is_file():  # absent when resuming with more ranks than saved: data order is seed-derived
        restore_rng_state(torch.load(rng_file, weights_only=True))
    return read_trainer_state(ckpt)
