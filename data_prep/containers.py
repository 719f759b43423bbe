"""Completeness checks for the container formats whose readers stop quietly where a file is cut.

- Arrow IPC stream (HF `save_to_disk` data files, most `.arrow` files): pyarrow's stream reader takes the end of
  the file as the end of the stream, so a file cut at a record-batch boundary reads as a shorter table without
  an error. We read the stream message by message and require that the last batch is followed by the
  end-of-stream marker (continuation 0xFFFFFFFF + length 0, or the pre-1.0 4-byte 0) ending exactly at the end
  of the file. Every batch is validated in full (offsets, UTF-8), which catches many flipped bits in offsets
  and lengths; Arrow has no checksum, so a flipped bit inside the text bytes of a string column stays valid
  UTF-8 more often than not and is NOT detectable.
- Arrow IPC file (`ARROW1` magic): the footer at the end lists every batch; a cut loses it and pyarrow refuses.
- Parquet: a cut always loses the footer (pyarrow refuses). Damage inside a data page can make pyarrow return
  fewer rows than the footer records without an error, so readers compare the rows they got with the footer.
  Page CRCs are verified where the writer stored them (pyarrow writes them only with write_page_checksum=True);
  without them a flipped bit in a page's text bytes is NOT detectable.
"""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.errors import DataPrepError

_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_LEGACY_EOS = b"\x00\x00\x00\x00"
_FILE_MAGIC = b"ARROW1"


def _arrow_error(path, detail: str) -> DataPrepError:
    return DataPrepError(f"{path}: truncated or corrupt Arrow file ({detail}); it was not read to a verified "
                         "end, re-create it (e.g. save_to_disk again)")


def arrow_rows(path: str | Path) -> int:
    """Rows of a complete Arrow IPC stream or file; raises naming the file if it is cut or damaged."""
    import pyarrow as pa
    path = Path(path)
    with pa.memory_map(str(path)) as mm:
        size = mm.size()
        if mm.read(6) == _FILE_MAGIC:
            return _arrow_file_rows(pa, path, mm)
        mm.seek(0)
        try:
            reader = pa.ipc.open_stream(mm)
            end, rows = mm.tell(), 0   # `end`: where the last complete message (schema or batch) ends
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                batch.validate(full=True)
                rows += batch.num_rows
                end = mm.tell()
        except (pa.ArrowException, OSError) as e:
            raise _arrow_error(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        mm.seek(end)
        tail = mm.read(size - end)
    if tail != _EOS and tail != _LEGACY_EOS:
        where = "no end-of-stream marker after the last record batch" if not tail else \
            f"{len(tail)} unexpected bytes after the last record batch"
        raise _arrow_error(path, f"{where}, at byte {end} of {size}")
    return rows


def _arrow_file_rows(pa, path: Path, mm) -> int:
    try:
        reader = pa.ipc.open_file(mm)
        rows = 0
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            batch.validate(full=True)
            rows += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise _arrow_error(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return rows


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataPrepError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise DataPrepError(f"{path}: expected a JSON object")
    return value


def saved_dataset_rows(folder: str | Path) -> dict[str, int]:
    """Rows per split ("" for a plain Dataset) of a `save_to_disk` folder, every Arrow file listed in its
    state.json checked complete. Raises naming the first bad or missing file."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json").get("splits")
        if not isinstance(splits, list):
            raise DataPrepError(f"{folder / 'dataset_dict.json'}: no list of splits")
        return {s: _split_rows(folder / s) for s in splits}
    return {"": _split_rows(folder)}


def _split_rows(folder: Path) -> int:
    files = _read_json(folder / "state.json").get("_data_files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "filename" in f for f in files):
        raise DataPrepError(f"{folder / 'state.json'}: no list of _data_files")
    total = 0
    for entry in files:
        path = folder / entry["filename"]
        if not path.is_file():
            raise DataPrepError(f"{path}: missing (listed in {folder / 'state.json'})")
        total += arrow_rows(path)
    return total


def parquet_rows(path: str | Path) -> int:
    """Rows the footer of a Parquet file records (a cut file has no footer: pyarrow raises)."""
    import pyarrow.parquet as pq
    return pq.ParquetFile(str(path)).metadata.num_rows


def check_row_count(path, got: int, expected: int, what: str) -> None:
    if got != expected:
        raise DataPrepError(f"{path}: corrupt file (read {got} rows, {what} records {expected}); re-create or "
                            "re-download it")
