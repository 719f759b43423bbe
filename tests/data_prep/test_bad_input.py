"""Every bad-input case: repaired and counted, skipped and counted, or a one-line error naming the culprit."""
from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.manifest import load_manifest
from tests.data_prep.conftest import decoded, run_cli, shard_ok


def _shard_fails(tmp_path, tok, *inputs_and_flags):
    rc, _, err = run_cli("shard", "--no-progress", "-o", tmp_path / "out", "-t", tok, *inputs_and_flags)
    assert rc == 2, err
    assert err.startswith("data_prep shard: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "manifest.json").exists()
    return err


def test_invalid_utf8_is_replaced_and_counted(tmp_path, sp_model):
    (tmp_path / "a.txt").write_bytes(b"good text \xff\xfe here \xc3( end")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "lone \\ud800 surrogate"}\n')
    shard_ok(tmp_path / "a.txt", tmp_path / "b.jsonl", "-o", tmp_path / "o", "-t", sp_model, "--val-fraction", 0)
    m = load_manifest(tmp_path / "o", verify="full")
    s = m.statistics
    assert (s["invalid_utf8_documents"], s["invalid_utf8_sequences"], s["surrogates_repaired"]) == (2, 4, 1)
    assert m.inputs[0]["invalid_utf8_sequences"] == 3 and m.inputs[1]["invalid_utf8_sequences"] == 1
    assert decoded(tmp_path / "o", sp_model, "train") == [
        "good text \ufffd\ufffd here \ufffd( end", "caf\ufffd ok", "lone \ufffd surrogate"]


def test_empty_documents_are_skipped_and_counted(tmp_path, sp_model):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b" \n\t\n")
    (tmp_path / "c.jsonl").write_text('{"text": ""}\n\n{"text": "  \\n "}\n{"text": "real one"}\n')
    shard_ok(tmp_path, "-o", tmp_path / "o", "-t", sp_model, "--val-fraction", 0)
    m = load_manifest(tmp_path / "o")
    assert m.statistics["empty_skipped"] == 4 and m.statistics["blank_lines"] == 1
    assert m.totals["all"]["documents"] == 1


def test_missing_json_field_names_file_and_line_or_is_skipped(tmp_path, sp_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n{"text": null}\n[1, 2]\n{"text": 5}\n{oops\n'
                   '{"text": "also fine"}\n')
    err = _shard_fails(tmp_path, sp_model, bad)
    assert f"{bad}:2: no field 'text' (fields: body" in err
    shard_ok(bad, "-o", tmp_path / "o", "-t", sp_model, "--skip-bad", "--val-fraction", 0)
    m = load_manifest(tmp_path / "o")
    assert m.statistics["bad_records_skipped"] == 5 and m.totals["all"]["documents"] == 2


@pytest.mark.parametrize("line,msg", [('{"text": null}', "field 'text' is null"),
                                      ('[1]', "expected a JSON object"),
                                      ('{"text": 5}', "field 'text' is int, expected a string"),
                                      ("{oops", "invalid JSON")])
def test_each_bad_record_kind_is_named(tmp_path, sp_model, line, msg):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' + line + "\n")
    assert f"{bad}:2: {msg}" in _shard_fails(tmp_path, sp_model, bad)


def test_unreadable_and_unknown_files_are_named(tmp_path, sp_model):
    corrupt = tmp_path / "x.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:60] + b"garbage")
    assert f"{corrupt}: cannot read" in _shard_fails(tmp_path, sp_model, corrupt)
    pq_bad = tmp_path / "y.parquet"
    pq_bad.write_bytes(b"PAR1 not really parquet")
    assert f"{pq_bad}: cannot read" in _shard_fails(tmp_path, sp_model, pq_bad)
    unknown = tmp_path / "notes.docx"
    unknown.write_bytes(b"PK")
    assert f"{unknown}: unknown input format" in _shard_fails(tmp_path, sp_model, unknown)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("ok")
    (folder / "README").write_text("x")
    assert f"{folder / 'README'}: unknown input format" in _shard_fails(tmp_path, sp_model, folder)
    assert "nope.txt: input not found" in _shard_fails(tmp_path, sp_model, tmp_path / "nope.txt")
    assert "no input files match" in _shard_fails(tmp_path, sp_model, str(tmp_path / "*.zzz"))
    if os.geteuid() != 0:  # root reads anything; the permission case only means something for other users
        locked = tmp_path / "locked.txt"
        locked.write_text("secret")
        locked.chmod(0)
        assert f"{locked}: cannot read" in _shard_fails(tmp_path, sp_model, locked)


def test_parquet_missing_column_and_null_rows(tmp_path, sp_model):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), f)
    assert f"{f}: no column 'text' (columns: content" in _shard_fails(tmp_path, sp_model, f)
    g = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), g)
    assert f"{g}:row 2: field 'text' is null" in _shard_fails(tmp_path, sp_model, g)


def test_binary_file_and_symlink_loop(tmp_path, sp_model):
    d = tmp_path / "in"
    d.mkdir()
    (d / "real.txt").write_text("some real text")
    (d / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (d / "loop").symlink_to(d, target_is_directory=True)
    assert "blob.txt: holds binary data" in _shard_fails(tmp_path, sp_model, d)
    shard_ok(d, "-o", tmp_path / "o", "-t", sp_model, "--skip-bad", "--val-fraction", 0)
    m = load_manifest(tmp_path / "o")
    assert m.statistics["binary_files_skipped"] == 1 and m.totals["all"]["documents"] == 1


def test_no_usable_text_is_a_clear_failure(tmp_path, sp_model):
    (tmp_path / "e.txt").write_text("   \n")
    (tmp_path / "f.jsonl").write_text('{"other": 1}\n')
    err = _shard_fails(tmp_path, sp_model, tmp_path / "e.txt", tmp_path / "f.jsonl", "--skip-bad")
    assert "no usable text in 2 input(s): 1 empty documents, 1 bad records" in err
    assert not any((tmp_path / "out").iterdir())


def test_bad_arguments_and_tokenizer(tmp_path, sp_model):
    (tmp_path / "a.txt").write_text("text")
    assert "--val-fraction: must be in [0, 1]" in _shard_fails(tmp_path, sp_model, tmp_path / "a.txt",
                                                                "--val-fraction", 2)
    bogus = tmp_path / "tok.model"
    bogus.write_bytes(b"not a model")
    assert f"{bogus}: cannot load tokenizer" in _shard_fails(tmp_path, bogus, tmp_path / "a.txt")
    assert "--eos-id 99999: outside the vocabulary" in _shard_fails(tmp_path, sp_model, tmp_path / "a.txt",
                                                                      "--eos-id", 99999)
