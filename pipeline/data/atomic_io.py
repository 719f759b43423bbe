"""Crash-safe file writes: write a temporary file in the same folder, fsync it, then rename it into place.

A reader therefore sees either the old file or the complete new one, never a torn one. The folder is fsynced
after the rename so the new name itself survives a power loss.
"""
from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def tmp_path_for(path: str | Path) -> Path:
    """The temporary name used while `path` is being written (same folder, so the rename is atomic)."""
    p = Path(path)
    return p.with_name(f"{p.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def commit(tmp: str | Path, final: str | Path) -> None:
    """Atomically move a fully written and fsynced temporary file to its final name."""
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
