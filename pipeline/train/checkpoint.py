"""Checkpoints: run_dir/checkpoints/step_N, written atomically, with a `latest` pointer updated last.

Layout of one checkpoint:
    step_N/model/            DeepSpeed save_checkpoint (module, optimizer / ZeRO partitions, lr scheduler)
    step_N/external/NAME/    parameters kept outside DeepSpeed (row-sharded OE table, expert shards) with their
                             optimizer state, one safetensors file per shard + meta.json (any world size on load)
    step_N/layout_free/      the DeepSpeed-held parameters and their optimizer state again, readable by any layout
                             (pipeline/train/layout_free.py; checkpoint.layout_free): a resume on another world
                             size, tp, ep or ZeRO stage reads this and external/ instead of model/
    step_N/rng/rank_R.pt     every RNG of rank R (torch.save of tensors/ints only: loaded weights_only)
    step_N/trainer_state.json step, data-loader position, data identity, world size (plain JSON)
    step_N/config.yaml       the resolved run config
    step_N/checksums.json    size and sha256 of every file above (written last)
Every rank writes into checkpoints/.tmp_step_N; once all have finished, rank 0 renames it to step_N (an
atomic rename, so a half-written checkpoint never carries a step_N name) and then rewrites `latest`.
Every file is covered by checksums.json (pipeline/train/checkpoint_manifest.py), written last inside the
folder. Resume tries `latest` (or, if the process died between the rename and the pointer update, the newest
complete step_N), and falls back to older complete ones when a newer one fails its checksums. Our own files are JSON/YAML or weights_only tensors; DeepSpeed's own files go through
DeepSpeed's loader only after a static scan of their pickles (pipeline/train/checkpoint_safety.py).
A failed write (disk full, read-only folder) ends on every rank with CheckpointWriteError: the partial folder
is removed and `latest` still names the previous complete checkpoint.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from pipeline.data.atomic_io import atomic_write_bytes, fsync_dir
from pipeline.train.checkpoint_manifest import MANIFEST, write_manifest
from pipeline.train.checkpoint_safety import check_checkpoint_is_safe
from pipeline.train.layout_free import EXTERNAL_DIR, LAYOUT_FREE_DIR
from pipeline.train.rng_state import capture_rng_state, restore_rng_state

DS_TAG = "model"                    # DeepSpeed's folder (its checkpoint tag)
RNG_DIR = "rng"
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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous one is intact."""


def _describe(error: BaseException, folder: Path) -> str:
    """One line: the error, what caused it (torch.save reports a failed write as a bare iostream error) and
    the free space left, which is what a user needs to see for a full disk."""
    parts = []
    for e in (error.__context__, error):
        if e is not None:
            text = str(e).strip().splitlines()
            parts.append(f"{type(e).__name__}: {text[0] if text else ''}")
    try:
        parts.append(f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there")
    except OSError:
        pass
    return "; ".join(parts)


def _agree_written(error: BaseException | None, tmp: Path, step: int) -> None:
    """Collective: if any rank failed to write its part, every rank raises (none is left waiting)."""
    failed = torch.tensor([0.0 if error is None else 1.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            failed = failed.cuda()
        dist.all_reduce(failed)
    if float(failed.item()) == 0:
        return
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; `latest` was never touched
    why = _describe(error, tmp.parent) if error is not None else "another rank failed to write its part"
    raise CheckpointWriteError(f"{tmp.parent}: could not write the checkpoint of step {step} ({why}); "
                               f"the previous checkpoint is intact") from error


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first."""
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / MANIFEST).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def save_checkpoint(engine, run_dir: str | Path, step: int, trainer_state: dict, config_yaml: str,
                    keep_last: int, external=None, layout_free=None) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder. `external`: the parameters
    kept outside DeepSpeed (pipeline/train/external_params.py), written into step_N/external/ before the rename;
    `layout_free`: a LayoutFreeState (pipeline/train/layout_free.py) writing step_N/layout_free/, or None."""
    root = checkpoint_root(run_dir)
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    rank = _rank()
    error = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp_step_*"):  # leftovers of a process killed mid-save
                shutil.rmtree(stale, ignore_errors=True)
            (tmp / RNG_DIR).mkdir(parents=True)
        except OSError as e:
            error = e
    _agree_written(error, tmp, step)
    try:
        engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={}, save_latest=False)
        if external is not None:
            external.save(tmp / EXTERNAL_DIR)
        if layout_free is not None:
            layout_free.save(tmp / LAYOUT_FREE_DIR)
        torch.save(capture_rng_state(), tmp / RNG_DIR / f"rank_{rank:05d}.pt")
    except dist.DistError:
        raise  # a collective failed: not a write problem (launch/train.py reports it)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports a failed write as a RuntimeError
        error = e
    _agree_written(error, tmp, step)
    if rank == 0:
        try:
            (tmp / CONFIG_FILE).write_text(config_yaml)
            atomic_write_bytes(tmp / STATE_FILE, json.dumps(trainer_state, indent=1).encode())
        except OSError as e:
            error = e
    _agree_written(error, tmp, step)
    try:
        write_manifest(tmp)   # collective; written last: it covers every file above
    except OSError as e:
        error = e
    _agree_written(error, tmp, step)
    if rank == 0:
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


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under a checkpoint folder (0 when it does not exist): the size a save costs."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    candidates = resume_candidates("auto", run_dir)
    return candidates[0] if candidates else None


def resume_candidates(resume: str, run_dir: str | Path) -> list[Path]:
    """train.resume -> the checkpoints to try, in order. "auto": `latest`, then every other complete step_N
    newest first (the fallbacks when the newer ones are damaged); "never"/"restart": none; a folder: it alone."""
    if resume in ("never", "restart"):
        return []
    if resume != "auto":
        path = Path(resume)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"train.resume: {path} is not a complete checkpoint (no {MANIFEST})")
        return [path]
    root = checkpoint_root(run_dir)
    ordered = [d for _, d in reversed(complete_checkpoints(root))]
    pointer = root / LATEST
    try:
        target = root / pointer.read_text().strip() if pointer.is_file() else None
    except (OSError, UnicodeDecodeError):
        target = None   # a damaged pointer: the newest complete folder is the latest
    if target is not None and target in ordered:
        ordered.remove(target)
        ordered.insert(0, target)
    return ordered


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())


def load_checkpoint(engine, ckpt: Path, external=None, repartition=None) -> dict:
    """Collective. Restores module, optimizer and lr scheduler (DeepSpeed), the external parameters with their
    optimizer state, and this rank's RNGs; returns the trainer state saved with them. `repartition`: a
    LayoutFreeState when the checkpoint was saved on another layout: every parameter and its optimizer state
    are then read from layout_free/ and external/, DeepSpeed's own per-rank files are not used."""
    if repartition is not None:
        for line in repartition.load(ckpt):
            if _rank() == 0:
                print(line, flush=True)
    else:
        check_checkpoint_is_safe(ckpt)  # before DeepSpeed unpickles anything from the folder
        load_path, _ = engine.load_checkpoint(str(ckpt), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"{ckpt}: DeepSpeed could not load the checkpoint under tag {DS_TAG!r}")
        if external is not None:
            external.load(ckpt / EXTERNAL_DIR)
    engine.lr_scheduler.apply()   # the restored schedule position sets the optimizer's lrs now
    rng_file = ckpt / RNG_DIR / f"rank_{_rank():05d}.pt"
    if rng_file.is_file():  # absent when resuming with more ranks than saved: data order is seed-derived
        restore_rng_state(torch.load(rng_file, weights_only=True))
    return read_trainer_state(ckpt)
