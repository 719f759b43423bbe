"""Every checkpoint file type, truncated, zeroed and bit-flipped, fed to resume and to export.

The checkpoint is a real 2-rank ZeRO-2 + EP2 + row-sharded-OE run, so it holds every file type: DeepSpeed's
model states and ZeRO optimizer partitions, the external OE table and expert shards (safetensors) with their
meta.json, per-rank RNG files, trainer_state.json, config.yaml and the checksum manifest itself. For each of
the 24 (file type, damage) pairs, both readers refuse it with one line naming the file: the verification
resume runs before loading (every rank checks its share of the files; here one process checks all) and
export's consolidation. End to end, three damaged latest checkpoints make a 2-rank resume fall back to the
previous one with a warning naming both; the latest pointer itself, damaged, falls back to the newest folder.
"""
from __future__ import annotations

import shutil

import pytest

from pipeline.export.checkpoint_reader import CheckpointError
from pipeline.export.consolidate import consolidate
from pipeline.train.checkpoint import LATEST, resume_candidates
from pipeline.train.checkpoint_manifest import MANIFEST, CheckpointDamaged, verify_checkpoint
from tests.pipeline.train.test_resume import args as resume_args
from tests.reliability.faults import drive

LAYOUT = ["deepspeed.zero_stage=2", "parallel.ep=2", "train.max_steps=4", "checkpoint.every=2",
          "checkpoint.keep_last=0", "eval.every=0"]
FILE_TYPES = {   # glob inside step_N -> what it is
    "model/mp_rank_00_model_states.pt": "DeepSpeed model states",
    "model/*optim_states.pt": "ZeRO optimizer partition",
    "external/over_encoding.table/*.safetensors": "OE table shard",
    "external/over_encoding.table/meta.json": "OE shard meta",
    "external/layers.0.mlp.experts.w_up/*.safetensors": "expert shard",
    "rng/rank_00000.pt": "RNG state",
    "trainer_state.json": "trainer state",
    "config.yaml": "run config",
    MANIFEST: "checksum manifest",
}


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeroed":
        data = bytearray(len(data))
    else:
        data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def ep2_run(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    proc = drive(resume_args(shards, run_dir, *LAYOUT), world_size=2, launcher="torchrun", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def damaged_copy(ep2_run, tmp_path, pattern: str, how: str):
    run_dir = tmp_path / "run"
    shutil.copytree(ep2_run, run_dir)
    step = run_dir / "checkpoints" / "step_4"
    targets = sorted(step.glob(pattern))
    assert targets, pattern
    damage(targets[0], how)
    return run_dir, step, targets[0]


@pytest.mark.parametrize("how", ["truncated", "zeroed", "flipped"])
@pytest.mark.parametrize("pattern", list(FILE_TYPES))
def test_every_damage_is_one_line_for_resume_and_export(ep2_run, tmp_path, pattern, how):
    _, step, target = damaged_copy(ep2_run, tmp_path, pattern, how)
    with pytest.raises(CheckpointDamaged) as resume_error:
        verify_checkpoint(step)
    with pytest.raises(CheckpointError) as export_error:
        consolidate(step)
    for e in (resume_error.value, export_error.value):
        text = str(e)
        assert "\n" not in text and str(target if pattern != MANIFEST else step / MANIFEST) in text, text


@pytest.mark.multirank
@pytest.mark.parametrize("pattern,how", [("model/*optim_states.pt", "flipped"),
                                         ("external/over_encoding.table/*.safetensors", "truncated"),
                                         (MANIFEST, "zeroed")])
def test_resume_falls_back_from_a_damaged_latest(shards, ep2_run, tmp_path, pattern, how):
    run_dir, step, target = damaged_copy(ep2_run, tmp_path, pattern, how)
    proc = drive(resume_args(shards, run_dir, *LAYOUT, "train.max_steps=6"), world_size=2, launcher="torchrun",
                 timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: checkpoint step_4")]
    assert len(warnings) == 1 and str(run_dir / "checkpoints" / "step_2") in warnings[0], proc.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_2'} at step 2" in proc.stdout


@pytest.mark.parametrize("how", ["truncated", "zeroed", "flipped"])
def test_a_damaged_latest_pointer_falls_back_to_the_newest_folder(ep2_run, tmp_path, how):
    run_dir = tmp_path / "run"
    shutil.copytree(ep2_run, run_dir)
    damage(run_dir / "checkpoints" / LATEST, how)
    assert resume_candidates("auto", run_dir)[0] == run_dir / "checkpoints" / "step_4"
