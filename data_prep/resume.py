"""Resumable output folders: a journal of finished shards, and the decision what to keep on a re-run.

While `shard` runs, the folder holds `.data_prep_journal.jsonl`: a header line with the run's fingerprint (a
hash of everything that determines the output bytes) and one line per finished shard (checksums, counts),
appended and fsynced after the shard's files were atomically renamed into place. `manifest.json` is written
last and the journal removed. A re-run of the same command keeps, per split, the longest prefix of recorded
shards whose files still match their checksums, deletes the other files this run wrote, and continues there.

Without --overwrite nothing is deleted that this run (this fingerprint) did not write: a folder holding another
run's manifest or journal, or a shard-named file that no record of this run accounts for, is refused with a
one-line error naming it. --overwrite deletes every file with one of our names (never any other file).
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
from pipeline.data.manifest import (MANIFEST_NAME, SPLITS, Manifest, ShardRecord, read_manifest, shard_name,
                                    verify_shard)

JOURNAL_NAME = ".data_prep_journal.jsonl"
LOCK_NAME = ".data_prep.lock"
_OURS = re.compile(rf"^(?:(?:{'|'.join(SPLITS)})_\d{{5}}\.(?:bin|idx)|{re.escape(MANIFEST_NAME)}|"
                   rf"{re.escape(JOURNAL_NAME)})(?:\.\d+{re.escape(TMP_SUFFIX)})?$")
_TMP = re.compile(rf"\.\d+{re.escape(TMP_SUFFIX)}$")   # the temporary-name suffix (atomic_io.tmp_path_for)


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
    def read(folder: Path) -> tuple[str | None, list[ShardRecord]] | None:
        """(fingerprint, records), None when there is no journal; fingerprint None when unreadable."""
        path = folder / JOURNAL_NAME
        if not path.is_file():
            return None
        lines = path.read_text(errors="replace").split("\n")
        try:
            fingerprint = json.loads(lines[0])["fingerprint"]
            if not isinstance(fingerprint, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return None, []
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


def _first_journal_was_ours(folder: Path, fingerprint: str) -> bool:
    """A kill while this run wrote its journal's first version leaves only that file's temporary copy."""
    for p in folder.glob(JOURNAL_NAME + ".*" + TMP_SUFFIX):
        try:
            if json.loads(p.read_text(errors="replace").split("\n")[0])["fingerprint"] == fingerprint:
                return True
        except (ValueError, KeyError, TypeError, OSError):
            pass
    return False


_ADVICE = "choose another --output, or pass --overwrite to delete them and start over"


def _records_of_this_run(folder: Path, fingerprint: str, dtype: str) -> tuple[bool, Manifest | None, list[ShardRecord]]:
    """(whether the folder holds a manifest or journal of this run, that manifest, every shard it records).
    Refuses a folder whose manifest or journal belongs to another run (or cannot be read: then nobody can say
    whose files these are)."""
    manifest = None
    if (folder / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(folder)
        except ShardError as e:
            raise DataPrepError(f"{e}; cannot tell which run wrote this folder, so nothing in it is deleted: "
                                f"{_ADVICE}") from None
        if manifest.fingerprint != fingerprint or manifest.dtype != dtype:
            raise DataPrepError(f"{folder}: already holds the shards of a different run (other inputs, tokenizer "
                                f"or arguments; see its {MANIFEST_NAME}); {_ADVICE}")
    records = list(manifest.shards) if manifest is not None else []
    journal = Journal.read(folder)
    if journal is None and manifest is None and _first_journal_was_ours(folder, fingerprint):
        return True, None, []
    if journal is not None:
        if journal[0] is None:
            raise DataPrepError(f"{folder / JOURNAL_NAME}: unreadable first line, cannot tell which run wrote this "
                                f"folder, so nothing in it is deleted: {_ADVICE}")
        if journal[0] != fingerprint:
            raise DataPrepError(f"{folder}: holds an interrupted run of a different dataset ({JOURNAL_NAME} records "
                                "other inputs, input files changed since, another tokenizer or other arguments); "
                                f"its shards are kept: {_ADVICE}")
        records += [r for r in journal[1] if r not in records]
    return manifest is not None or journal is not None, manifest, records


def _ours_to_replace(folder: Path, same_run: bool, records: list[ShardRecord]) -> list[Path]:
    """The files with our names that this run wrote (and may now delete); raises naming the first one that no
    record of this run accounts for. Besides recorded shards, a run may have left the shard after its last
    recorded one per split (killed between the rename and the journal line) and temporary files of those."""
    names = {n for r in records for n in (r.bin, r.idx)}
    if same_run:
        names |= {MANIFEST_NAME, JOURNAL_NAME}
        for split in SPLITS:
            nxt = 1 + max((r.index for r in records if r.split == split), default=-1)
            names |= {shard_name(split, nxt) + ".bin", shard_name(split, nxt) + ".idx"}
    ours = _our_files(folder)
    strays = [p for p in ours if _TMP.sub("", p.name) not in names]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise DataPrepError(f"{strays[0]}{more}: a file with a data_prep shard name that no record of this run "
                            f"accounts for (written by another run, or copied here); data_prep does not delete "
                            f"files it did not write: move it away, {_ADVICE}")
    return ours


def prepare_output(folder: Path, fingerprint: str, dtype: str, overwrite: bool) -> tuple[OutputState, Journal | None]:
    """Decide what of an existing output folder to keep; returns the state and an open journal (None when the
    folder already holds this run complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = {s: [] for s in SPLITS}
    if overwrite:
        ours = _our_files(folder)
    else:
        same_run, manifest, records = _records_of_this_run(folder, fingerprint, dtype)
        if manifest is None:   # refuse strays before hashing anything
            ours = _ours_to_replace(folder, same_run, records)
        kept = _verified_prefix(folder, records, dtype)
        if manifest is not None:
            if all(r in kept[r.split] for r in manifest.shards):
                return OutputState(kept, complete=manifest), None
            ours = _ours_to_replace(folder, same_run, records)
    keep_names = {n for recs in kept.values() for r in recs for n in (r.bin, r.idx)}
    (folder / MANIFEST_NAME).unlink(missing_ok=True)  # first: the folder must not look complete meanwhile
    for p in ours:
        if p.name not in keep_names and p.name != JOURNAL_NAME:
            p.unlink(missing_ok=True)
    state = OutputState(kept)
    return state, Journal(folder, fingerprint, [r for s in SPLITS for r in kept[s]])
