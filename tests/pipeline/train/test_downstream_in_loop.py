"""In-loop zero-shot evaluation: the scalars reach metrics.jsonl, TensorBoard and run_dir/downstream/, and the
in-loop numbers equal launch/eval.py run afterwards on the saved checkpoint (same model, same questions)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.multirank import REPO
from tests.pipeline.train.runs import launch, read_metrics

TASKS = "[arc_easy,piqa]"
LIMIT = 6


def _corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = "the king and queen of the realm spoke to the people about the war and the peace".split()
    for i in range(40):
        text = " ".join(words[(i + j) % len(words)] for j in range(120))
        (folder / f"doc{i:02d}.txt").write_text(text + ".\n")
    return folder


def _data_prep(*args) -> None:
    subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO, check=True,
                   capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    corpus = _corpus(root / "corpus")
    _data_prep("train-tokenizer", corpus, "-o", root / "tok.model", "--vocab-size", 300)
    _data_prep("shard", corpus, "-t", root / "tok.model", "-o", root / "shards", "--val-fraction", "0.2",
               "--no-progress")
    return root / "shards"


def test_in_loop_downstream_matches_offline_eval(shards, tmp_path):
    run = tmp_path / "run"
    launch(["--config", "configs/run/tiny-cpu.yaml", f"data.path={shards}", f"run_dir={run}",
            "model.vocab_size=512", "train.max_steps=4", "eval.downstream_every=2",
            f"eval.downstream_limit={LIMIT}", f"eval.downstream_tasks={TASKS}"], launcher="python")
    records = {r["step"]: r for r in read_metrics(run)}
    for step in (2, 4):
        assert {"downstream/arc_easy", "downstream/piqa"} <= records[step].keys()
        saved = json.loads((run / "downstream" / f"step_{step}.json").read_text())
        assert saved["tasks"]["piqa"]["items"] == LIMIT
        assert saved["tasks"]["piqa"]["primary"] == records[step]["downstream/piqa"]
    assert "downstream/piqa" not in records.get(1, {})

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train.metrics_writer import tensorboard_run_dir
    acc = EventAccumulator(str(tensorboard_run_dir(run)))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/downstream/piqa")] == [2, 4]

    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, "launch/eval.py", "--checkpoint", str(run), "--tasks", "arc_easy,piqa",
                    "--limit", str(LIMIT), "--no-val", "--out", str(out)], cwd=REPO, check=True,
                   capture_output=True, timeout=180)
    offline = json.loads(out.read_text())
    in_loop = json.loads((run / "downstream" / "step_4.json").read_text())
    for task in ("arc_easy", "piqa"):
        for key in ("acc_raw", "acc_per_token", "acc_per_char"):
            assert offline["tasks"][task][key] == in_loop["tasks"][task][key], (task, key)
