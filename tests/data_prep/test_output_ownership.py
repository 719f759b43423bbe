"""data_prep never deletes what this run did not write unless told to (issue 14, class 8): the leftovers of an
interrupted run of a different dataset, and shard-named files no record of this run accounts for, are refused
with one line naming them and left untouched; --overwrite starts over; the same run still resumes.

Before the fix, every refusal below was a silent deletion with exit 0, except the unreadable manifest (refused
then too, as "a different run"); a run that failed before any shard left a journal behind."""
from __future__ import annotations

import json

import pytest

from data_prep.resume import JOURNAL_NAME
from pipeline.data.manifest import load_manifest
from tests.data_prep.conftest import folder_bytes, make_docs, run_cli, shard_ok
from tests.data_prep.integrity_helpers import assert_refused, good_input, jsonl_bytes, shard_cli


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refused(args, folder, name: str) -> str:
    before = snapshot(folder)
    rc, _, err = run_cli("shard", "--no-progress", *args)
    assert rc == 2 and err.count("\n") == 1 and name in err and "--overwrite" in err, (rc, err)
    assert snapshot(folder) == before, "a refused run must leave the folder exactly as it was"
    return err


def interrupted_run(tmp_path, sp_model):
    """A real interrupted run in tmp_path/out: shards of good.jsonl written and journaled, then the second
    input turns out truncated (exit 2). Returns (the good input, the damaged one)."""
    good, bad = good_input(tmp_path, docs=5000), tmp_path / "second.jsonl"
    bad.write_bytes(jsonl_bytes(make_docs(30, seed=5))[:-20])
    proc, out = shard_cli(tmp_path, sp_model, good, bad, shard_tokens=BIG[-1])
    assert_refused(proc, out, bad)     # only complete, journaled shards and no manifest are left
    assert len(list(out.glob("train_*.bin"))) >= 3 and (out / JOURNAL_NAME).is_file()
    return good, bad


COMMON = ["--val-fraction", 0, "--shard-tokens", 300]
BIG = ["--val-fraction", 0, "--shard-tokens", 20000]


@pytest.mark.parametrize("change", ["other inputs", "other settings", "the damaged input fixed"])
def test_interrupted_run_of_another_dataset_is_refused_then_overwrite_starts_over(tmp_path, sp_model, change):
    good, bad = interrupted_run(tmp_path, sp_model)
    out, other = tmp_path / "out", tmp_path / "other.jsonl"
    other.write_bytes(jsonl_bytes(make_docs(20, seed=9)))
    if change == "other inputs":
        run = [other]
    elif change == "other settings":
        run = [good, "--split-seed", 3]
    else:
        bad.write_bytes(jsonl_bytes(make_docs(30, seed=5)))   # now complete: a different file than the journal's
        run = [good, bad]
    run += ["-t", sp_model, *BIG]
    err = refused([*run, "-o", out], out, JOURNAL_NAME)
    assert "interrupted run of a different dataset" in err
    shard_ok(*run, "-o", out, "--overwrite")
    m = load_manifest(out, verify="full")
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json"] + [n for s in m.shards
                                                                                 for n in (s.bin, s.idx)])
    shard_ok(*run, "-o", tmp_path / "fresh")
    assert folder_bytes(out) == folder_bytes(tmp_path / "fresh")


@pytest.mark.parametrize("stray", ["train_00003.bin", "val_00000.idx", "train_00000.bin.4242.tmp",
                                   "manifest.json.17.tmp"])
def test_stray_shard_file_in_a_fresh_folder_is_refused_then_overwrite_removes_only_ours(tmp_path, sp_model, stray):
    corpus, out = good_input(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / stray).write_bytes(b"somebody else's bytes")
    (out / "notes.txt").write_text("not ours: never touched, not even by --overwrite")
    args = [corpus, "-o", out, "-t", sp_model, *COMMON]
    assert "that no record of this run accounts for" in refused(args, out, str(out / stray))
    shard_ok(*args, "--overwrite")
    load_manifest(out, verify="full")
    assert (out / "notes.txt").read_text().startswith("not ours")
    # gone, or replaced by a shard of this run with the same name
    assert not (out / stray).exists() or (out / stray).read_bytes() != b"somebody else's bytes"


def _interrupted_same_run(tmp_path, sp_model, journaled: int):
    """A folder as a SIGKILL of this very run leaves it: the journal lists the first `journaled` train shards,
    the next shard got its .bin renamed but not its .idx (killed between the two renames), nothing after."""
    corpus, out = good_input(tmp_path), tmp_path / "out"
    args = [corpus, "-o", out, "-t", sp_model, *COMMON]
    shard_ok(*args)
    ref = folder_bytes(out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    lines = [json.dumps({"fingerprint": m["fingerprint"]})] + [json.dumps(s) for s in m["shards"][:journaled]]
    (out / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    nxt = m["shards"][journaled]
    (out / nxt["idx"]).rename(out / (nxt["idx"] + ".999.tmp"))
    for s in m["shards"][journaled + 1:]:
        (out / s["bin"]).unlink()
        (out / s["idx"]).unlink()
    return args, out, ref


def test_same_run_resumes_over_its_own_leftovers_but_not_over_a_stray(tmp_path, sp_model):
    args, out, ref = _interrupted_same_run(tmp_path, sp_model, journaled=2)
    (out / "train_00042.bin").write_bytes(b"a stray copy")
    refused(args, out, str(out / "train_00042.bin"))
    (out / "train_00042.bin").unlink()
    rc, stdout, err = run_cli("shard", "--no-progress", *args)
    assert rc == 0, err
    assert "resuming; kept 2 train" in stdout
    assert folder_bytes(out) == ref
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *ref])


def test_same_run_resumes_when_killed_while_writing_its_first_journal(tmp_path, sp_model):
    corpus, out = good_input(tmp_path), tmp_path / "out"
    args = [corpus, "-o", out, "-t", sp_model, *COMMON]
    shard_ok(*args, "-o", tmp_path / "ref")
    fp = load_manifest(tmp_path / "ref").fingerprint
    out.mkdir()
    (out / f"{JOURNAL_NAME}.31.tmp").write_text(json.dumps({"fingerprint": fp}) + "\n")
    shard_ok(*args)
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")
    assert not list(out.glob("*.tmp"))
    (out / "manifest.json").unlink()
    (out / f"{JOURNAL_NAME}.32.tmp").write_text(json.dumps({"fingerprint": "f" * 64}) + "\n")
    refused(args, out, f"{JOURNAL_NAME}.32.tmp")


def test_unreadable_manifest_or_journal_is_refused_not_removed(tmp_path, sp_model):
    corpus, out = good_input(tmp_path), tmp_path / "out"
    args = [corpus, "-o", out, "-t", sp_model, *COMMON]
    shard_ok(*args)
    (out / "manifest.json").write_text("{ not json")
    assert "cannot tell which run wrote this folder" in refused(args, out, "manifest.json")
    (out / "manifest.json").unlink()
    (out / JOURNAL_NAME).write_text("garbage\n")
    assert "cannot tell which run wrote this folder" in refused(args, out, JOURNAL_NAME)
    shard_ok(*args, "--overwrite")
    load_manifest(out, verify="full")


def test_a_run_that_fails_before_any_shard_leaves_nothing_to_refuse(tmp_path, sp_model):
    bad, out = tmp_path / "docs.jsonl", tmp_path / "out"
    bad.write_bytes(jsonl_bytes()[:-20])
    args = [bad, "-o", out, "-t", sp_model, *COMMON]
    rc, _, err = run_cli("shard", "--no-progress", *args)
    assert rc == 2 and "looks truncated" in err
    assert list(out.iterdir()) == []          # no journal: nothing was finished, nothing to resume
    bad.write_bytes(jsonl_bytes())             # fixed: a different file, but nothing to refuse
    shard_ok(*args)
