"""Resume safety (real runs of launch/train.py): a resume that would train another model, or on a layout the
checkpoint cannot resume on, is refused with one line; allowed changes are applied and printed; a run_dir
belongs to one job; a damaged latest checkpoint makes resume fall back to the newest intact one."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from pipeline.config.base import ConfigError
from pipeline.train.checkpoint_manifest import verify_checkpoint
from pipeline.train.resume_rules import check_layout_change
from tests.pipeline.train.runs import read_metrics
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive, error_lines


@pytest.fixture
def run_copy(straight_run, tmp_path):
    """A copy of the reference run (8 steps, checkpoints at 2, 4, 6, 8; the last 2 kept by tiny-cpu)."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)
    return run_dir


def one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("change,key", [
    ("model.top_k=1", "model.top_k 2 -> 1"),                         # every tensor shape still matches
    ("model.doc_mask=false", "model.doc_mask True -> False"),
    ("model.over_decoding.weight=0.5", "model.over_decoding.weight 0.1 -> 0.5"),
    ("optim.weight_decay=0.0", "optim.weight_decay 0.1 -> 0.0"),     # DeepSpeed would restore the old one
])
def test_resume_into_a_different_model_is_refused(shards, run_copy, change, key):
    error = one_error(drive(run_args(shards, run_copy, "train.max_steps=10", change)))
    assert key in error and "cannot change on resume" in error, error


def test_allowed_changes_are_applied_and_printed(shards, run_copy):
    from pipeline.config.run import load_run_config
    from pipeline.train.lr_schedule import lr_factor

    args = run_args(shards, run_copy, "train.max_steps=12", "optim.lr=6e-3")
    proc = drive(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line for line in proc.stdout.splitlines() if line.startswith("changed on resume:")]
    assert any("optim.lr 0.003 -> 0.006" in p for p in printed), printed
    assert any("train.max_steps 8 -> 12" in p for p in printed), printed
    assert any("schedule.decay_steps 8 -> 12" in p for p in printed), printed
    assert any("lr of the next update (step 9)" in p for p in printed), printed
    cfg = load_run_config(args[1], args[2:])
    lr9 = {r["step"]: r["lr"] for r in read_metrics(run_copy)}[9]
    assert abs(lr9 - 6e-3 * lr_factor(8, cfg.schedule)) < 1e-9, lr9   # the new lr and schedule, at step 9


def test_a_layout_change_repartitions_or_is_refused(shards, run_copy):
    proc = drive(run_args(shards, run_copy, "train.max_steps=10", "deepspeed.zero_stage=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layout changed on resume: deepspeed.zero_stage 0 -> 2" in proc.stdout, proc.stdout[-3000:]
    saved = {"parallel": {"tp": 1, "ep": 1}, "deepspeed": {"zero_stage": 1}}
    with pytest.raises(ConfigError, match=r"data-parallel size 2 -> 4 .*checkpoint\.layout_free false"):
        check_layout_change(saved, 2, saved, 4, "ckpt", has_layout_free=False)
    assert check_layout_change(saved, 2, saved, 4, "ckpt", has_layout_free=True) == [
        "data-parallel size 2 -> 4 (world 2 -> 4)"]
    zero0 = {**saved, "deepspeed": {"zero_stage": 0}}
    assert check_layout_change(zero0, 2, zero0, 4, "ckpt", has_layout_free=False) == []  # replicated files


def _write_lock(run_dir, pid: int, job: str) -> None:
    (run_dir / "run.lock").write_text(json.dumps({"job": job, "host": socket.gethostname(), "pid": pid,
                                                   "started": "2026-01-01T00:00:00"}))


def test_a_second_job_in_the_same_run_dir_is_refused(shards, run_copy):
    before = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    _write_lock(run_copy, os.getpid(), "rendezvous=10.0.0.1:29500")    # a live process of another job
    error = one_error(drive(run_args(shards, run_copy, "train.max_steps=10")))
    assert "in use by job rendezvous=10.0.0.1:29500" in error and str(os.getpid()) in error, error
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == before   # nothing read or deleted


def test_a_stale_lock_is_taken_over(shards, run_copy):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(run_copy, dead.pid, "rendezvous=10.0.0.1:29500")
    proc = drive(run_args(shards, run_copy, "train.max_steps=10"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over {run_copy / 'run.lock'}" in proc.stdout and f"process {dead.pid} is gone" in proc.stdout
    assert not (run_copy / "run.lock").exists()   # released at the end


def test_a_requeued_slurm_job_is_the_same_job(monkeypatch):
    from pipeline.train.run_lock import job_identity
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    monkeypatch.setenv("MASTER_PORT", "29500")
    first = job_identity()
    monkeypatch.setenv("MASTER_ADDR", "node-b")   # requeued: rank 0 elsewhere, a new torchrun store port
    monkeypatch.setenv("MASTER_PORT", "41234")
    assert job_identity() == first == "SLURM_JOB_ID=4242"
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    assert job_identity() != first


def test_resume_never_over_checkpoints_is_refused_and_restart_starts_over(shards, run_copy):
    error = one_error(drive(run_args(shards, run_copy, "train.resume=never")))
    assert "train.resume: never" in error and "train.resume=restart" in error, error
    proc = drive(run_args(shards, run_copy, "train.resume=restart", "train.max_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" not in proc.stdout and [r["step"] for r in read_metrics(run_copy)] == [1, 2]


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(shards, run_copy):
    ckpts = run_copy / "checkpoints"
    damaged = ckpts / "step_8" / "model" / "mp_rank_00_model_states.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x10                           # one flipped bit
    damaged.write_bytes(bytes(data))
    # an explicit train.resume of the damaged folder is an error, not a fallback
    error = one_error(drive(run_args(shards, run_copy, f"train.resume={ckpts / 'step_8'}", "train.max_steps=10")))
    assert str(damaged) in error and "sha256 differs" in error, error
    proc = drive(run_args(shards, run_copy, "train.max_steps=10"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: checkpoint step_8")]
    assert warning and str(damaged) in warning[0] and str(ckpts / "step_6") in warning[0], proc.stderr[-2000:]
    assert f"resumed from {ckpts / 'step_6'} at step 6" in proc.stdout


def test_reshard_command_converts_or_refuses_with_one_line(run_copy, tmp_path):
    step = run_copy / "checkpoints" / "step_8"
    cmd = [sys.executable, "-m", "pipeline.train.reshard", str(step)]
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "bad"), "--world", "2", "--ep", "3"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "tp x ep = 1 x 3" in bad.stderr and not (tmp_path / "bad").exists(), bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.startswith("error:")]) == 1, bad.stderr
    good = subprocess.run([*cmd, "--out", str(tmp_path / "w2"), "--world", "2", "--zero-stage", "2"],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "(world 1, tp 1, ep 1, ZeRO-0)" in good.stdout and "(world 2, tp 1, ep 1, ZeRO-2)" in good.stdout
    assert "over_encoding.table" in good.stdout and "-> 2 row shards" in good.stdout, good.stdout
    verify_checkpoint(tmp_path / "w2")   # a complete checkpoint with checksums
    assert not (tmp_path / "w2" / "model").exists() and not list(tmp_path.glob(".tmp_*"))
