"""Paths recorded in a run, resolved the same from any working directory.

A run records paths as it was given them: `data.path` in every checkpoint's config.yaml (relative to the
directory launch/train.py was started in), and the tokenizer path in the data manifest (as given to
data_prep). Readers (eval, generate, export) resolve a relative data.path against these folders, in order,
and take the first that holds a manifest.json:
  1. the training working directory: `cwd` in trainer_state.json when the trainer records it, else inferred
     from run_dir: the checkpoint's run folder is <training cwd>/<run_dir> when run_dir was relative (the
     folder names are compared, so a run folder that was moved or renamed infers nothing);
  2. the run folder itself (data kept or copied next to the run);
  3. the repository root (the documented place to launch from).
The reader's own working directory is never consulted, so `cd /tmp && python launch/eval.py --checkpoint
/abs/run` reads the same data as the same command from the repository. The tokenizer is searched in the
data folder, the same folders and the repository root, and a file is taken only when its sha256 equals the
recorded one, so the order cannot pick another tokenizer. What was found goes into the provenance dict
(`meta`) that eval / generate use and that export writes to export.json, with the absolute paths.

The tokenizer the model was trained with is the one in trainer_state.json (the loader records the data
manifest's tokenizer sha256 at every checkpoint); a data folder whose manifest now names another tokenizer
does not get to supply it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from pipeline.data.manifest import MANIFEST_NAME
from pipeline.data.tokenizer import locate_tokenizer, read_manifest_tokenizer
from pipeline.train.checkpoint import CONFIG_FILE, STATE_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_state(step_dir: Path) -> dict:
    try:
        state = json.loads((step_dir / STATE_FILE).read_text())
    except (OSError, ValueError):   # damage is reported by the checkpoint reader itself
        return {}
    return state if isinstance(state, dict) else {}


def _read_run_config(step_dir: Path) -> dict:
    try:
        cfg = yaml.safe_load((step_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):   # consolidate() has read it already; it reports damage itself
        return {}
    return cfg if isinstance(cfg, dict) else {}


def training_dirs(step_dir: Path, run_config: dict, state: dict) -> list[Path]:
    """The folders a relative path recorded in this checkpoint is resolved against (module docstring)."""
    run_folder = step_dir.resolve().parent.parent          # <run_dir>/checkpoints/step_N
    dirs = []
    if isinstance(state.get("cwd"), str) and os.path.isabs(state["cwd"]):
        dirs.append(Path(state["cwd"]))
    run_dir = run_config.get("run_dir")
    if isinstance(run_dir, str) and run_dir and not os.path.isabs(run_dir):
        parts = Path(os.path.normpath(run_dir)).parts
        if ".." not in parts and parts != (".",) and run_folder.parts[-len(parts):] == parts:
            dirs.append(run_folder.parents[len(parts) - 1])
    dirs += [run_folder, REPO_ROOT]
    return list(dict.fromkeys(dirs))


def resolve_data_path(recorded: str, bases: list[Path]) -> tuple[Path | None, list[Path]]:
    """(the folder with a manifest.json, or None; the candidates looked at)."""
    if os.path.isabs(recorded):
        candidates = [Path(recorded)]
    else:
        candidates = list(dict.fromkeys(base / recorded for base in bases))
    for c in candidates:
        if (c / MANIFEST_NAME).is_file():
            return c.resolve(), candidates
    return None, candidates


def _tokenizer_from_data(data_folder: Path | None, bases: list[Path], trained_sha: str | None) -> dict | None:
    """The data manifest's tokenizer record with the file located; a placeholder naming the problem when the
    manifest names another tokenizer than the one the model was trained with."""
    record = read_manifest_tokenizer(data_folder) if data_folder is not None else None
    if record is None:
        return {"sha256": trained_sha, "path": None,
                "problem": "the training data (and so its tokenizer record) was not found"} if trained_sha else None
    if trained_sha and record.get("sha256") != trained_sha:
        return {"sha256": trained_sha, "path": None,
                "problem": f"{data_folder / MANIFEST_NAME} now names tokenizer {str(record.get('sha256'))[:16]}…, "
                           f"not the {trained_sha[:16]}… the model was trained with"}
    return locate_tokenizer(record, [data_folder, *bases])


def resolve_checkpoint_meta(meta: dict, step_dir: Path) -> dict:
    """meta of a checkpoint (consolidate.py) with data.path and the tokenizer resolved by the rule above."""
    state, run_config = _read_state(step_dir), _read_run_config(step_dir)
    bases = training_dirs(step_dir, run_config, state)
    data = dict(meta.get("data") or {})
    recorded = data.get("path")
    found = None
    if isinstance(recorded, str) and recorded:
        found, tried = resolve_data_path(recorded, bases)
        data["recorded_path"] = recorded
        if found is not None:
            data["path"] = str(found)
        else:
            data["not_found_in"] = [str(t) for t in tried]
    trained_sha = (state.get("data") or {}).get("tokenizer_sha256") if isinstance(state.get("data"), dict) else None
    tokenizer = _tokenizer_from_data(found, bases, trained_sha)
    trained = None
    if trained_sha:
        trained = {"sha256": trained_sha, "vocab_size": (tokenizer or {}).get("vocab_size"),
                   "recorded_in": str(step_dir / STATE_FILE)}
    return {**meta, "data": data, "tokenizer": tokenizer, "trained_tokenizer": trained}


def resolve_export_meta(meta: dict, export_dir: Path, info_file: str) -> dict:
    """meta of an export folder (export.json). Exports written by launch/export.py record absolute paths;
    a relative one (an older export) is resolved against the export folder and the repository root."""
    bases = [export_dir.resolve(), REPO_ROOT]
    data = dict(meta.get("data") or {})
    found = None
    if isinstance(data.get("path"), str) and data["path"]:
        found, tried = resolve_data_path(data["path"], bases)
        if found is not None:
            data["path"] = str(found)
        else:
            data["not_found_in"] = [str(t) for t in tried]
    tokenizer = meta.get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("path"):
        tokenizer = locate_tokenizer(tokenizer, [p for p in (found, *bases) if p is not None])
    trained = meta.get("trained_tokenizer")
    if not trained and isinstance(tokenizer, dict) and tokenizer.get("sha256"):
        trained = {"sha256": tokenizer["sha256"], "vocab_size": tokenizer.get("vocab_size")}
    if trained:
        trained = {**trained, "recorded_in": str(export_dir / info_file)}
    return {**meta, "data": data, "tokenizer": tokenizer, "trained_tokenizer": trained}
