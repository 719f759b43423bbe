"""Training on a weighted mixture: per-source validation and token counts in metrics.jsonl and TensorBoard,
the index cache built once by local rank 0 and shared, the same losses at world 1 and 2, and an exact resume
(world 1 -> world 2)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers.multirank import run_ranks
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import EOS, VOCAB, read_metrics, train_in_process

WEIGHTS = {"web": 0.7, "code": 0.3}


def make_sources(root: Path) -> dict[str, str]:
    out = {}
    for i, name in enumerate(WEIGHTS):
        folder = root / name
        if not (folder / "manifest.json").is_file():
            write_shard_folder(folder, {"train": random_documents(200 - 100 * i, VOCAB, EOS, seed=i, distinct=24),
                                        "val": random_documents(30, VOCAB, EOS, seed=10 + i, distinct=24)}, VOCAB, EOS)
        out[name] = str(folder)
    return out


def mixture_args(paths: dict[str, str]) -> list[str]:
    items = ", ".join(f"{{name: {n}, path: {paths[n]}, weight: {w}}}" for n, w in WEIGHTS.items())
    return ["data.path=", f"data.sources=[{items}]", "train.max_steps=4", "eval.every=2", "checkpoint.every=2"]


def train(rank, world, root):
    paths = make_sources(Path(root))
    return train_in_process(paths["web"], f"{root}/run{world}", *mixture_args(paths),
                            f"log.tensorboard={str(world == 1).lower()}")


def resume(rank, world, root):
    paths = make_sources(Path(root))
    return train_in_process(paths["web"], f"{root}/resumed", *mixture_args(paths), "log.tensorboard=false",
                            f"train.resume={root}/run1/checkpoints/step_2")


@pytest.mark.multirank
def test_mixture_metrics_and_world_size_independence(tmp_path):
    one = run_ranks(1, "tests.pipeline.train.test_mixture_training:train", {"root": str(tmp_path)}, timeout=180)[0]
    two = run_ranks(2, "tests.pipeline.train.test_mixture_training:train", {"root": str(tmp_path)}, timeout=180)[0]
    assert one.keys() == two.keys() == {"1", "2", "3", "4"}
    for step in one:
        assert math.isclose(one[step], two[step], rel_tol=1e-5), (step, one[step], two[step])

    records = {r["step"]: r for r in read_metrics(tmp_path / "run1")}
    last = records[4]
    weighted = sum(w * last[f"val/{n}/loss"] for n, w in WEIGHTS.items()) / sum(WEIGHTS.values())
    assert math.isclose(last["val_loss"], weighted, rel_tol=1e-12)
    tokens = {n: last[f"data/{n}/tokens"] for n in WEIGHTS}
    assert sum(tokens.values()) == last["tokens_seen"] == 4 * 4 * 32     # 4 steps x global batch 4 x seq_len 32
    assert tokens["web"] > tokens["code"] > 0

    resumed = run_ranks(2, "tests.pipeline.train.test_mixture_training:resume", {"root": str(tmp_path)},
                        timeout=180)[0]
    assert resumed.keys() == {"3", "4"}
    for step in resumed:
        assert math.isclose(resumed[step], one[step], rel_tol=1e-5), (step, resumed[step], one[step])

    # One index folder per source, built by the first run and reused by the world-2 runs.
    for name in WEIGHTS:
        assert len(list((tmp_path / name / "index_cache").iterdir())) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = sorted((tmp_path / "run1" / "tensorboard").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for name in WEIGHTS:
        assert f"loss/val/{name}" in tags and f"data/{name}/tokens" in tags, tags
