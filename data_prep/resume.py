"""Resumable output folders: a journal of finished shards, and the decision what to keep on a re-run.

While `shard` runs, the folder holds `.data_prep_journal.jsonl`: a header line with the run's fingerprint (a
hash of everything that determines the output bytes) and one line per finished shard (checksums, counts),
appended and fsynced after the shard's files were atomically renamed into place. `manifest.json` is written
last and the journal removed. A re-run of the same command keeps, per split, the longest prefix of recorded
shards whose files still match their checksums, deletes everything else of ours, and continues from there.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.errors import DataPrepError
from pipeline.data.atomic_io import TMP_SUFFIX, atomic_write_bytes
from pipeline.data.indexed_dataset import ShardError
from pipeline.data.manifest import MANIFEST_NAME, SPLITS, Manifest, ShardRecord, read_manifest, verify_shard

JOURNAL_NAME = ".data_prep_journal.jsonl"
LOCK_NAME = ".data_prep.lock"
_OURS = re.compile(rf"^(?:(?:{'|'.join(SPLITS)})_\d{{5}}\.(?:bin|idx)|{re.escape(MANIFEST_NAME)}|"
                   rf"{re.escape(JOURNAL_NAME)})(?:\.\d+{re.escape(TMP_SUFFIX)})?$")


def lock_folder(folder: Path):
    """Exclusive advisory lock for the lifetime of the process: two runs must never write one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_NAME, "w")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise DataPrepError(f"{folder}: another data_prep shard run is writing to this folder") from None
    return f


class Journal:
    def __init__(self, folder: Path, fingerprint: str, records: list[ShardRecord]):
        self.path = folder / JOURNAL_NAME
        lines = [json.dumps({"fingerprint": fingerprint})] + [json.dumps(asdict(r)) for r in records]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())
        self._f = open(self.path, "a")

    def append(self, rec: ShardRecord) -> None:
        self._f.write(json.dumps(asdict(rec)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self, remove: bool = False) -> None:
        if not self._f.closed:
            self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)

    @staticmethod
    def read(folder: Path) -> tuple[str, list[ShardRecord]] | None:
        path = folder / JOURNAL_NAME
        if not path.is_file():
            return None
        lines = path.read_text(errors="replace").split("\n")
        try:
            fingerprint = json.loads(lines[0])["fingerprint"]
        except (ValueError, KeyError, TypeError):
            return None
        records = []
        for line in lines[1:]:
            try:
                records.append(ShardRecord(**json.loads(line)))
            except (ValueError, TypeError):
                break  # a torn last line from a kill mid-append: that shard is simply redone
        return fingerprint, records


@dataclass
class OutputState:
    kept: dict[str, list[ShardRecord]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    complete: Manifest | None = None     # set when the folder already holds this exact run, fully intact

    @property
    def resumed(self) -> bool:
        return any(self.kept.values())


def _our_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _OURS.match(p.name))


def _verified_prefix(folder: Path, records: list[ShardRecord], dtype: str) -> dict[str, list[ShardRecord]]:
    kept = {s: [] for s in SPLITS}
    for split in SPLITS:
        for rec in sorted((r for r in records if r.split == split), key=lambda r: r.index):
            if rec.index != len(kept[split]):
                break
            try:
                verify_shard(folder, rec, dtype, "full")
            except ShardError:
                break
            kept[split].append(rec)
    return kept


def prepare_output(folder: Path, fingerprint: str, dtype: str, overwrite: bool) -> tuple[OutputState, Journal | None]:
    """Decide what of an existing output folder to keep; returns the state and an open journal (None when the
    folder already holds this run complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = None
    if not overwrite:
        if (folder / MANIFEST_NAME).is_file():
            try:
                m = read_manifest(folder)
            except ShardError:
                m = None
            if m is not None and m.fingerprint == fingerprint and m.dtype == dtype:
                kept = _verified_prefix(folder, m.shards, dtype)
                if sum(map(len, kept.values())) == len(m.shards):
                    return OutputState(kept, complete=m), None
        if kept is None:
            journal = Journal.read(folder)
            if journal is not None and journal[0] == fingerprint:
                kept = _verified_prefix(folder, journal[1], dtype)
        if kept is None and (folder / MANIFEST_NAME).is_file():
            raise DataPrepError(f"{folder}: already holds the shards of a different run (other inputs, tokenizer "
                                "or arguments); choose another --output or pass --overwrite")
    # Leftovers of an interrupted run of other arguments (a journal, no manifest) were never usable: discard.
    kept = kept or {s: [] for s in SPLITS}
    keep_names = {n for recs in kept.values() for r in recs for n in (r.bin, r.idx)}
    (folder / MANIFEST_NAME).unlink(missing_ok=True)  # first: the folder must not look complete meanwhile
    for p in _our_files(folder):
        if p.name not in keep_names and p.name != JOURNAL_NAME:
            p.unlink()
    state = OutputState(kept)
    return state, Journal(folder, fingerprint, [r for s in SPLITS for r in kept[s]])
