"""Readers of row-oriented containers: Parquet, HF `save_to_disk` folders, and `datasets.load_dataset` inputs.

Each reads a text column by record batches (memory bounded by a batch) and counts the rows it got against what
the container itself records (Parquet footers, Arrow streams checked to their end-of-stream marker): these
libraries can return fewer rows than the file holds without an error (see containers.py), and a short read
must be an error naming the file, never a smaller dataset.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from data_prep.compressed import drain
from data_prep.containers import arrow_rows, check_row_count, parquet_rows, saved_dataset_rows
from data_prep.errors import DataPrepError
from data_prep.reader_base import BATCH_ROWS, Reader
from data_prep.sources import InputSource


def _column_texts(reader: Reader, values: list, first_row: int, where: str = "") -> Iterator[str]:
    """Texts of one batch of a text column (rows numbered from 1 per file/split); nulls and non-strings are
    bad records."""
    field = reader.opts.text_field
    for row, value in enumerate(values, start=first_row):
        if isinstance(value, str):
            yield value
        elif value is None:
            reader._bad(f"{where}row {row}", f"field {field!r} is null")
        else:
            reader._bad(f"{where}row {row}", f"field {field!r} is {type(value).__name__}, expected a string")


def _quiet_datasets():
    """datasets logs a read failure on stderr before raising it; we report it as our one line instead."""
    import datasets
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _require_column(src: InputSource, names: list[str], field: str, where: str = "") -> None:
    if field not in names:
        raise DataPrepError(f"{src.path}{where}: no column {field!r} (columns: {', '.join(names[:12])}; "
                            "choose one with --text-field)")


class ParquetReader(Reader):
    def __iter__(self) -> Iterator[str]:
        import pyarrow.parquet as pq
        # Page CRCs, where the writer stored them, catch flipped bits in the pages.
        f = pq.ParquetFile(self.src.path, page_checksum_verification=True)
        _require_column(self.src, f.schema_arrow.names, self.opts.text_field)
        size, total = os.path.getsize(self.src.path), f.metadata.num_rows
        done = 0
        for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=[self.opts.text_field]):
            yield from _column_texts(self, batch.column(0).to_pylist(), done + 1)
            done += batch.num_rows
            self.consumed = size * done // max(1, total)
        check_row_count(self.src.path, done, total, "its footer")


class HfDiskReader(Reader):
    """A `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder (every split, or --hf-split)."""

    def __iter__(self) -> Iterator[str]:
        datasets = _quiet_datasets()
        # Before datasets reads them: every Arrow file complete (datasets reads a cut stream as a short table).
        expected = saved_dataset_rows(self.src.path)
        ds = datasets.load_from_disk(self.src.path)
        if isinstance(ds, datasets.DatasetDict):
            names = [self.opts.hf_split] if self.opts.hf_split else list(ds.keys())
            for name in names:
                if name not in ds:
                    raise DataPrepError(f"{self.src.path}: no split {name!r} (splits: {', '.join(ds.keys())})")
            parts = [(n, ds[n]) for n in names]
        else:
            parts = [("", ds)]
        size = self.src.nbytes()
        total = max(1, sum(len(d) for _, d in parts))
        done = 0
        for name, d in parts:
            where = f" split {name}" if name else ""
            _require_column(self.src, d.column_names, self.opts.text_field, where)
            arrow = d.select_columns([self.opts.text_field]).with_format("arrow")
            row = 1
            for table in arrow.iter(batch_size=BATCH_ROWS):
                yield from _column_texts(self, table.column(0).to_pylist(), row, f"split {name} " if name else "")
                row += table.num_rows
                done += table.num_rows
                self.consumed = size * done // total
            check_row_count(f"{self.src.path}{where}", row - 1, expected.get(name, -1), "its Arrow files")


_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def check_data_files(files: list[str]) -> int | None:
    """Prove every file `datasets` will read complete, before it reads them: Arrow streams to their end marker,
    Parquet footers present, gzip/zstd decompressed to their verified end. Returns the total rows when every
    file records its row count (Arrow, Parquet), else None."""
    total: int | None = 0
    for f in files:
        if not os.path.isfile(f):
            total = None   # a remote or archive member path ("zip://..."): nothing local to check
            continue
        suffix = Path(f).suffix.lower()
        if suffix == ".arrow":
            rows = arrow_rows(f)
        elif suffix == ".parquet":
            rows = _cannot_read(f, parquet_rows)
        else:
            if suffix in _COMPRESSION:
                drain(f, _COMPRESSION[suffix])
            rows = None
        total = None if rows is None or total is None else total + rows
    return total


def _cannot_read(path: str, fn):
    try:
        return fn(path)
    except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
        raise DataPrepError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0]})") from None


class HfLoadReader(Reader):
    """Local files or a local dataset folder through `datasets.load_dataset(..., streaming=True)`."""

    def __iter__(self) -> Iterator[str]:
        datasets = _quiet_datasets()
        kwargs = {}
        if self.src.builder == "csv" and all(f.endswith(".tsv") for f in self.src.data_files):
            kwargs["delimiter"] = "\t"
        target = self.src.builder or self.src.path
        files = list(self.src.data_files) or None
        split = self.opts.hf_split or "train"
        try:
            # The builder resolves which files make up the split (for a folder, by datasets' own patterns):
            # exactly those are checked, then streamed.
            builder = datasets.load_dataset_builder(target, data_files=files, **kwargs)
            resolved = builder.config.data_files or {}
            if split not in resolved:
                raise DataPrepError(f"{self.src.path}: no split {split!r} (splits: {', '.join(map(str, resolved))})")
            expected = check_data_files([str(f) for f in resolved[split]])
            ds = builder.as_streaming_dataset(split=split)
        except (ValueError, FileNotFoundError) as e:
            raise DataPrepError(f"{self.src.path}: datasets.load_dataset failed ({str(e).splitlines()[0]})") from None
        size, row = self.src.nbytes(), 1
        for batch in ds.iter(batch_size=BATCH_ROWS):
            if row == 1:
                _require_column(self.src, list(batch), self.opts.text_field)
            values = batch[self.opts.text_field]
            yield from _column_texts(self, values, row)
            row += len(values)
            # Rows carry no file offsets when streaming: estimate progress by the text read so far.
            self.consumed = min(size, self.consumed + sum(len(t) for t in values if isinstance(t, str)))
        self.consumed = size
        if expected is not None:
            check_row_count(self.src.path, row - 1, expected, "its files")
