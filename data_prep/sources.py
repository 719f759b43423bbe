"""Input specifications -> an ordered list of input sources with a known format.

Accepted specs: files, directories (walked recursively in sorted order; hidden entries skipped; symlink loops
detected), globs (`*`, `?`, `[..]`, `**`), HF `save_to_disk` folders, and `hf:` specs routed through
`datasets.load_dataset` (`hf:BUILDER:GLOB`, e.g. `hf:csv:data/*.csv`, or `hf:FOLDER` for a local dataset folder).
A file whose format is unknown is an error naming it, never silently ignored.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_TEXT_EXT = {".txt", ".text"}
_JSONL_EXT = {".jsonl", ".json", ".ndjson"}   # Dolma-style "*.json.gz" shards are JSON Lines too
_LOAD_DATASET_EXT = {".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
HF_BUILDERS = ("json", "csv", "parquet", "arrow", "text")
KNOWN_FORMATS = ".txt[.gz|.zst], .jsonl/.json/.ndjson[.gz|.zst], .parquet, .csv, .tsv, .arrow, " \
                "HF save_to_disk folders, hf:BUILDER:GLOB"


@dataclass(frozen=True)
class InputSource:
    path: str                        # as the user (or the expansion) named it
    kind: str                        # "text" | "jsonl" | "parquet" | "hf_disk" | "hf_load"
    compression: str | None = None   # "gzip" | "zstd" for text/jsonl
    builder: str | None = None       # hf_load: datasets builder name, or None for a dataset folder
    data_files: tuple[str, ...] = ()  # hf_load: files handed to load_dataset

    @property
    def format(self) -> str:
        if self.kind == "hf_load":
            return f"hf:{self.builder or 'folder'}"
        return self.kind + (f".{self.compression}" if self.compression else "")

    def files(self) -> list[Path]:
        """The files on disk behind this source (for sizes, progress and the resume fingerprint)."""
        if self.kind == "hf_disk" or (self.kind == "hf_load" and not self.data_files):
            return sorted(p for p in Path(self.path).rglob("*") if p.is_file())
        if self.kind == "hf_load":
            return [Path(f) for f in self.data_files]
        return [Path(self.path)]

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def identity(self) -> list:
        """What must not change for shards of an interrupted run to be reused."""
        return [self.path, self.kind, self.compression, self.builder,
                [(str(f), s.st_size, s.st_mtime_ns) for f in self.files() for s in (f.stat(),)]]


def is_hf_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def detect(path: Path) -> InputSource:
    """Format of one existing file (or HF folder) by its name."""
    if path.is_dir():
        if is_hf_saved_dataset(path):
            return InputSource(str(path), "hf_disk")
        raise DataPrepError(f"{path}: is a directory, not a dataset file")
    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression:
        inner = suffixes[-2] if len(suffixes) >= 2 else ""
    else:
        inner = suffixes[-1] if suffixes else ""
    if inner in _TEXT_EXT:
        return InputSource(str(path), "text", compression)
    if inner in _JSONL_EXT:
        return InputSource(str(path), "jsonl", compression)
    if inner == ".parquet" and not compression:
        return InputSource(str(path), "parquet")
    if inner in _LOAD_DATASET_EXT and not compression:
        return InputSource(str(path), "hf_load", builder=_LOAD_DATASET_EXT[inner], data_files=(str(path),))
    raise DataPrepError(f"{path}: unknown input format (known: {KNOWN_FORMATS})")


def _walk(root: Path, exclude: set[str]) -> list[Path]:
    """Files (and HF dataset folders) under `root`, sorted, following symlinks but never looping, never
    entering the `exclude` folders (our own output folder when it lies inside an input folder)."""
    out, seen = [], set(exclude)

    def visit(d: Path) -> None:
        real = os.path.realpath(d)
        if real in seen:
            return  # a symlink loop or a folder reached twice: read it once
        seen.add(real)
        try:
            entries = sorted(d.iterdir(), key=lambda p: p.name)
        except OSError as e:
            raise DataPrepError(f"{d}: cannot list directory ({e.strerror or e})") from None
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if is_hf_saved_dataset(p):
                    out.append(p)
                else:
                    visit(p)
            elif p.is_file():
                out.append(p)
            elif not p.exists():
                raise DataPrepError(f"{p}: broken symlink")

    visit(root)
    return out


def _hf_spec(spec: str) -> InputSource:
    rest = spec[len("hf:"):]
    builder, sep, pattern = rest.partition(":")
    if sep and builder in HF_BUILDERS:
        files = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        files = [f for f in files if Path(f).is_file()]
        if not files:
            raise DataPrepError(f"{spec}: no files match {pattern!r}")
        return InputSource(spec, "hf_load", builder=builder, data_files=tuple(files))
    if Path(rest).is_dir():
        return InputSource(rest, "hf_load")
    raise DataPrepError(f"{spec}: expected hf:FOLDER or hf:BUILDER:GLOB with BUILDER one of {', '.join(HF_BUILDERS)}")


def _dedupe(named: list[tuple[str, InputSource]]) -> list[InputSource]:
    """Each file read once: a file named by two specs (a path and a glob, a folder and a file in it, a link)
    would otherwise be tokenized twice and silently double its share of the data. Warns naming both specs."""
    first: dict[str, str] = {}
    kept = []
    for spec, src in named:
        key = src.path if src.kind == "hf_load" and src.builder is None and not Path(src.path).exists() \
            else os.path.realpath(src.path)
        if key in first:
            print(f"warning: {src.path} is named by both {first[key]!r} and {spec!r}: read once", file=sys.stderr)
            continue
        first[key] = spec
        kept.append(src)
    return kept


def expand_inputs(specs: list[str], exclude: str | Path | None = None) -> list[InputSource]:
    """Resolve every spec, in the order given; files inside a directory or glob in sorted order; a file named
    twice is read once (with a warning). Nothing inside `exclude` (the output folder) is ever an input."""
    skip = {os.path.realpath(exclude)} if exclude is not None else set()
    inside = lambda p: any(os.path.realpath(p) == e or os.path.realpath(p).startswith(e + os.sep)  # noqa: E731
                           for e in skip)
    sources: list[tuple[str, InputSource]] = []
    for spec in specs:
        if spec.startswith("hf:"):
            sources.append((spec, _hf_spec(spec)))
            continue
        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise DataPrepError(f"{spec}: no input files match this pattern")
            paths = []
            for m in map(Path, matches):
                if not inside(m):
                    paths.extend(_walk(m, skip) if m.is_dir() and not is_hf_saved_dataset(m) else [m])
        else:
            p = Path(spec)
            if not p.exists():
                raise DataPrepError(f"{spec}: input not found")
            paths = _walk(p, skip) if p.is_dir() and not is_hf_saved_dataset(p) else [p]
            if not paths:
                raise DataPrepError(f"{spec}: directory holds no input files")
        sources.extend((spec, detect(p)) for p in paths)
    return _dedupe(sources)
