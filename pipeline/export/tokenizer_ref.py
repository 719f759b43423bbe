"""Which tokenizer a model was trained with: the data manifest named in the run config records its path,
sha256, vocabulary size and EOS id (CONTRACTS.md). Exports copy that record into export.json, so generation
and evaluation can find the tokenizer from a checkpoint or an export alone (or take --tokenizer)."""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.tokenizer import Tokenizer, TokenizerSpec, file_sha256
from pipeline.export.checkpoint_reader import CheckpointError


def tokenizer_record_from_run_config(run_config: dict) -> dict | None:
    """The manifest's tokenizer record {path, sha256, kind, vocab_size, eos_id}, or None if unavailable."""
    data_path = (run_config.get("data") or {}).get("path")
    if not data_path:
        return None
    manifest = Path(data_path) / "manifest.json"
    try:
        record = json.loads(manifest.read_text()).get("tokenizer")
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or "path" not in record:
        return None
    # the manifest stores the path as given to data_prep (often relative to the repository root)
    for candidate in (Path(record["path"]), manifest.parent / record["path"], manifest.parent / Path(record["path"]).name):
        if candidate.is_file():
            return {**record, "path": str(candidate.resolve())}
    return record


def load_tokenizer(path: str | Path | None, record: dict | None, model_vocab_size: int) -> Tokenizer:
    """--tokenizer PATH if given, else the recorded one; checked against the recorded sha256 and the model."""
    if path is None:
        if record is None:
            raise CheckpointError("no tokenizer recorded for this model (its data manifest is not reachable): "
                                  "pass --tokenizer")
        path = record["path"]
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: recorded tokenizer not found: pass --tokenizer")
        if record.get("sha256") and file_sha256(path) != record["sha256"]:
            raise CheckpointError(f"{path}: sha256 differs from the one recorded at training time")
    eos = record.get("eos_id") if record else None
    tok = Tokenizer(TokenizerSpec(str(path), eos_id=eos))
    if tok.vocab_size > model_vocab_size:
        raise CheckpointError(f"{path}: tokenizer vocab_size {tok.vocab_size} exceeds the model's vocab_size "
                              f"{model_vocab_size}")
    return tok
