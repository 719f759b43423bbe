"""Identical bytes for any --workers; kill -9 and re-run resumes to the same result; reruns are safe."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from data_prep.resume import JOURNAL_NAME
from pipeline.data.indexed_dataset import IndexedShardReader
from pipeline.data.manifest import load_manifest
from tests.data_prep.conftest import REPO, folder_bytes, make_docs, run_cli, shard_ok


def _manifest(folder) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    m["arguments"].pop("output")
    return m


def _corpus(tmp_path, n=800):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(n, seed=42)), encoding="utf-8")
    return path


def test_output_identical_for_1_and_2_workers(tmp_path, sp_model):
    corpus = _corpus(tmp_path)
    common = ["-t", sp_model, "--shard-tokens", 5000, "--val-fraction", 0.1]
    shard_ok(corpus, "-o", tmp_path / "w1", "--workers", 1, *common)
    shard_ok(corpus, "-o", tmp_path / "w2", "--workers", 2, *common)
    a, b = folder_bytes(tmp_path / "w1"), folder_bytes(tmp_path / "w2")
    assert len(a) > 10 and a == b
    assert _manifest(tmp_path / "w1") == _manifest(tmp_path / "w2")


def test_kill_and_rerun_resumes_to_identical_output(tmp_path, sp_model):
    corpus = _corpus(tmp_path, n=6000)
    args = [corpus, "-t", sp_model, "--shard-tokens", 2000, "--val-fraction", 0.05, "--workers", 2]
    shard_ok(*args, "-o", tmp_path / "ref")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", "shard", "--no-progress", *map(str, args), "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    journal = out / JOURNAL_NAME
    deadline = time.time() + 300   # generous: CI machines may be heavily shared
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 6:   # header + >= 5 finished shards
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed; enlarge the corpus"
    os.killpg(proc.pid, signal.SIGKILL)   # the whole group: parent and its worker processes
    proc.wait()
    assert not (out / "manifest.json").exists()
    # Whatever has a final name is complete: every .idx opens and agrees with its .bin.
    for idx in out.glob("*.idx"):
        IndexedShardReader(idx.with_suffix(""))
    rc, stdout, err = run_cli("shard", "--no-progress", *args, "-o", out)
    assert rc == 0, err
    assert "resuming" in stdout
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")
    assert _manifest(out) == _manifest(tmp_path / "ref")
    assert not list(out.glob("*.tmp")) and not (out / JOURNAL_NAME).exists()


def test_rerun_skips_complete_and_repairs_corrupted_shard(tmp_path, sp_model):
    corpus = _corpus(tmp_path)
    args = [corpus, "-o", tmp_path / "o", "-t", sp_model, "--shard-tokens", 5000]
    shard_ok(*args)
    ref = folder_bytes(tmp_path / "o")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    assert "nothing to do" in shard_ok(*args)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    victim = tmp_path / "o" / "train_00002.bin"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = shard_ok(*args)
    assert "resuming; kept 2 train" in out
    assert folder_bytes(tmp_path / "o") == ref
    load_manifest(tmp_path / "o", verify="full")


def test_folder_of_another_run_needs_overwrite(tmp_path, sp_model):
    corpus = _corpus(tmp_path, n=50)
    shard_ok(corpus, "-o", tmp_path / "o", "-t", sp_model)
    rc, _, err = run_cli("shard", "--no-progress", corpus, "-o", tmp_path / "o", "-t", sp_model,
                         "--val-fraction", 0.5)
    assert rc == 2 and "different run" in err and "--overwrite" in err
    shard_ok(corpus, "-o", tmp_path / "o", "-t", sp_model, "--val-fraction", 0.5, "--overwrite")
    assert load_manifest(tmp_path / "o").arguments["val_fraction"] == 0.5


def test_output_inside_input_folder_and_concurrent_runs(tmp_path, sp_model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a document")
    shard_ok(corpus, "-o", corpus / "shards", "-t", sp_model, "--val-fraction", 0)
    # The second run must not read its own output (manifest.json, .bin files) as input.
    assert "nothing to do" in shard_ok(corpus, "-o", corpus / "shards", "-t", sp_model, "--val-fraction", 0)
    from data_prep.resume import lock_folder
    held = lock_folder(tmp_path / "busy")
    try:
        rc, _, err = run_cli("shard", "--no-progress", corpus / "a.txt", "-o", tmp_path / "busy", "-t", sp_model)
        assert rc == 2 and "another data_prep shard run is writing to this folder" in err
    finally:
        held.close()
