"""The checksum manifest of a checkpoint: every file of step_N/ with its size and sha256, written last.

Writing: after every rank has written its files, the ranks hash disjoint shares of the folder (file i goes to
rank i mod world, so a 52 GB OE table costs each rank 1/world of one read), rank 0 gathers the digests and
writes checksums.json; only then is the folder renamed to step_N. Verifying: the same split over the ranks
of a resuming job (collective), or every file in one process (eval, generate, export). Any difference (a
missing, extra, truncated, zeroed or bit-flipped file, or a damaged manifest) is a CheckpointDamaged with
one line naming the file, raised before any reader parses it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from pipeline.data.manifest import sha256_file

MANIFEST = "checksums.json"
FORMAT = 1


class CheckpointDamaged(ValueError):
    """A checkpoint file differs from its manifest (or the manifest itself is unreadable)."""


def checkpoint_files(folder: Path) -> list[str]:
    """Every regular file under `folder` except the manifest, relative, sorted (the same list on every rank)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not (p.parent == folder and p.name == MANIFEST))


def _my_share(files: list[str], rank: int, world: int) -> list[str]:
    return files[rank::world]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj):
    rank, world = _world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def write_manifest(folder: Path, collective: bool = True) -> None:
    """Collective (unless told otherwise): hash the folder's files across the ranks; rank 0 writes the
    manifest (atomically). Exports use it on one process."""
    from pipeline.data.atomic_io import atomic_write_bytes

    rank, world = _world() if collective else (0, 1)
    files = checkpoint_files(folder)
    mine = {f: {"bytes": (folder / f).stat().st_size, "sha256": sha256_file(folder / f)}
            for f in _my_share(files, rank, world)}
    merged: dict = {}
    for part in (_gather(mine) if collective else [mine]):
        merged.update(part)
    if rank == 0:
        body = {"format": FORMAT, "files": {f: merged[f] for f in files}}
        atomic_write_bytes(folder / MANIFEST, json.dumps(body, indent=1).encode())


def read_manifest(folder: Path) -> dict[str, dict]:
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text())
        files = body["files"]
        if body.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"unknown format {body.get('format')!r}")
        for f, entry in files.items():
            int(entry["bytes"]), str(entry["sha256"])
    except FileNotFoundError:
        raise CheckpointDamaged(f"{path}: missing (every checkpoint ends with its checksum manifest)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointDamaged(f"{path}: unreadable checksum manifest ({type(e).__name__}: {e})") from None
    return files


def _problems(folder: Path, expected: dict[str, dict], names: list[str]) -> list[str]:
    out = []
    for name in names:
        path = folder / name
        if name not in expected:
            out.append(f"{path}: not covered by {MANIFEST}")
            continue
        entry = expected[name]
        try:
            size = path.stat().st_size
        except OSError:
            out.append(f"{path}: missing")
            continue
        if size != entry["bytes"]:
            out.append(f"{path}: {size} bytes, {MANIFEST} records {entry['bytes']} (truncated or rewritten)")
        elif sha256_file(path) != entry["sha256"]:
            out.append(f"{path}: sha256 differs from {MANIFEST} (the file is damaged)")
    return out


def verify_files(folder: Path, names: list[str]) -> None:
    """Not collective: check just these files (e.g. the small config and state every rank reads first)."""
    problems = _problems(folder, read_manifest(folder), names)
    if problems:
        raise CheckpointDamaged(problems[0])


def verify_checkpoint(folder: Path, collective: bool = False) -> None:
    """Every file against the manifest: by this process alone, or split over the ranks (collective: every rank
    gets the same verdict)."""
    folder = Path(folder)
    problems: list[str] = []
    try:
        expected = read_manifest(folder)
        present = checkpoint_files(folder)
        names = sorted(set(expected) | set(present))
        rank, world = _world() if collective else (0, 1)
        problems = _problems(folder, expected, _my_share(names, rank, world))
    except CheckpointDamaged as e:
        problems = [str(e)]
    if collective:
        problems = [p for part in _gather(problems) for p in part]
    if problems:
        raise CheckpointDamaged(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
