"""launch/train.py as a user meets it: one-line errors with exit code 2 for bad config and data, and the
final summary line of a finished run (which re-running reprints without training)."""
from __future__ import annotations

from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import TINY_RUN, launch, make_shards


def run_cli(*args):
    return launch(["--config", str(TINY_RUN), *args], launcher="python", check=False, timeout=120)


def error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    return lines[0]


def test_bad_override_is_one_line(tmp_path):
    assert "optim.lr: must be > 0, got -1.0" in error_line(run_cli("data.path=x", "optim.lr=-1"))
    assert "unknown key train.max_step" in error_line(run_cli("data.path=x", "train.max_step=3"))


def test_missing_data_is_one_line(tmp_path):
    assert f"{tmp_path}/manifest.json: missing" in error_line(run_cli(f"data.path={tmp_path}"))


def test_vocabulary_larger_than_the_model_is_one_line(tmp_path):
    big = write_shard_folder(tmp_path / "big", {"train": random_documents(50, 1000, 999, seed=1)}, 1000, 999)
    line = error_line(run_cli(f"data.path={big}", f"run_dir={tmp_path / 'run'}"))
    assert "tokenizer vocab_size 1000 exceeds the model's model.vocab_size 512" in line


def test_finished_run_prints_its_result_again(tmp_path):
    shards = make_shards(tmp_path / "shards")
    common = [f"data.path={shards}", f"run_dir={tmp_path / 'run'}", "train.max_steps=2", "eval.every=0",
              "checkpoint.every=0"]
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "final validation loss" in first.stdout and "tensorboard --logdir" in first.stdout
    again = run_cli(*common)
    assert "already at step 2: nothing to train" in again.stdout and "step 1/2" not in again.stdout
    summary = [ln for ln in first.stdout.splitlines() if ln.startswith("final validation loss")]
    assert summary and summary[0] in again.stdout
