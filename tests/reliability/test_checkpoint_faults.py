"""Checkpoint faults: SIGKILL while a checkpoint is being written, a full disk, a malicious checkpoint."""
from __future__ import annotations

import contextlib
import pickle
import re
import shutil
import subprocess

import pytest
import torch

from pipeline.train.checkpoint import find_latest_checkpoint, load_checkpoint  # noqa: F401 (documented API)
from tests.pipeline.train.test_resume import assert_same_history
from tests.reliability.conftest import run_args
from tests.reliability.faults import drive, error_lines


def checkpoint_names(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def resume_and_compare(shards, straight_run, run_dir, expect_from: str) -> None:
    resumed = drive(run_args(shards, run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / expect_from}" in resumed.stdout
    assert_same_history(straight_run, run_dir)


@pytest.mark.parametrize("when", ["ds_saved", "renamed"])
def test_sigkill_during_checkpoint_write_keeps_previous_and_resumes(shards, straight_run, tmp_path, when):
    run_dir = tmp_path / "run"
    killed = drive(run_args(shards, run_dir), {"FAULT_KILL_IN_SAVE": when, "FAULT_SAVE_INDEX": 2})
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_2"     # never points at the step-4 save
    assert (ckpts / "step_2" / "trainer_state.json").is_file()
    if when == "ds_saved":  # DeepSpeed's files are written, ours are not: only a .tmp folder exists
        assert checkpoint_names(run_dir) == [".tmp_step_4", "latest", "step_2"]
        assert not (ckpts / ".tmp_step_4" / "trainer_state.json").exists()
    else:                   # renamed but the pointer not yet rewritten: step_4 is complete, latest is step_2
        assert checkpoint_names(run_dir) == ["latest", "step_2", "step_4"]
    assert find_latest_checkpoint(run_dir) == ckpts / "step_2"
    resume_and_compare(shards, straight_run, run_dir, "step_2")
    assert not (ckpts / ".tmp_step_4").exists()  # the leftover is cleaned by the next save


def assert_clean_write_failure(proc, run_dir) -> None:
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "\n" not in errors[0], proc.stderr[-3000:]
    assert str(run_dir / "checkpoints") in errors[0] and "step 4" in errors[0] and "intact" in errors[0]
    assert "Traceback" not in proc.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert checkpoint_names(run_dir) == ["latest", "step_2"]   # the partial step-4 folder was removed


def test_file_size_limit_while_checkpointing_is_a_clear_error(shards, straight_run, tmp_path):
    """Simulated full disk: RLIMIT_FSIZE (1 MiB) in the training process from the second save on, so the
    8 MB model file fails with EFBIG."""
    run_dir = tmp_path / "run"
    proc = drive(run_args(shards, run_dir), {"FAULT_FSIZE_AT_SAVE": f"2:{1 << 20}"})
    assert_clean_write_failure(proc, run_dir)
    resume_and_compare(shards, straight_run, run_dir, "step_2")


def test_full_tmpfs_checkpoint_folder_is_a_clear_error(shards, straight_run, tmp_path):
    """A real full file system: a 20 MiB tmpfs holds the first checkpoint (12.8 MiB) but not the second."""
    run_dir = tmp_path / "run"
    mount_point = run_dir / "checkpoints"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); RLIMIT_FSIZE test covers it")
    try:
        proc = drive(run_args(shards, run_dir))
        assert_clean_write_failure(proc, run_dir)
        # the cause and the space left (after the partial folder was removed) are in the one line
        assert "No space left on device" in proc.stderr and re.search(r"\d+\.\d MiB free there", proc.stderr)
        # The state is intact: once space is back, the run resumes from step_2 and matches the straight run.
        for name in ("step_2", "latest"):
            src = mount_point / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    for name in ("step_2", "latest"):
        shutil.move(str(tmp_path / name), str(mount_point / name))
    resume_and_compare(shards, straight_run, run_dir, "step_2")


class _RunsCode:
    """Unpickling this calls exec(): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _rehash(step_dir, target: str) -> None:
    import hashlib
    import json

    from pipeline.train.checkpoint_manifest import MANIFEST
    manifest = json.loads((step_dir / MANIFEST).read_text())
    data = (step_dir / target).read_bytes()
    manifest["files"][target] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (step_dir / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def evil_checkpoint(straight_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run / "checkpoints", run_dir / "checkpoints")
    return run_dir, run_dir / "checkpoints" / "step_8", tmp_path / "pwned"


@pytest.mark.parametrize("target,fmt", [("model/mp_rank_00_model_states.pt", "torch"),
                                        ("model/mp_rank_00_model_states.pt", "legacy_pickle"),
                                        ("rng/rank_00000.pt", "torch")])
def test_malicious_checkpoint_is_rejected_without_running_code(shards, evil_checkpoint, target, fmt):
    run_dir, step_dir, marker = evil_checkpoint
    path = step_dir / target
    payload = {"module": {}, "evil": _RunsCode(marker)}
    if fmt == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    # The payload is live: full unpickling (what DeepSpeed's loader does) would run it.
    with contextlib.suppress(RuntimeError):  # a bare pickle runs before torch checks its magic number
        torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()
    # A careful attacker also rewrites the checksum manifest, so the pickle scan is what must refuse it.
    _rehash(step_dir, target)

    proc = drive(run_args(shards, run_dir, "train.max_steps=10"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and str(path) in errors[0] and "refused" in errors[0], proc.stderr[-3000:]
    assert not marker.exists()
    assert "step 9/10" not in proc.stdout

    from pipeline.export.checkpoint_reader import CheckpointError, read_deepspeed_weights

    if target.startswith("model/"):  # export / eval / generate read the same files
        with pytest.raises(CheckpointError, match="refused"):
            read_deepspeed_weights(step_dir)
        assert not marker.exists()
