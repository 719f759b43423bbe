"""val_loss of one checkpoint is the same at world 1 and world 2: eval.batches names a fixed set of validation
windows, split over the data-parallel ranks (before, each rank scored eval.batches micro-batches of its own,
so world 2 scored twice the windows)."""
from __future__ import annotations

import pytest

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, tiny_config, train_in_process

ARGS = ["train.max_steps=4", "eval.every=0", "eval.at_end=false", "log.tensorboard=false", "eval.batches=3"]


def train(rank, world, shards, root):
    train_in_process(shards, f"{root}/run", *ARGS, "checkpoint.every=4")


def evaluate(rank, world, shards, root):
    from pipeline.train.build import build_trainer
    from pipeline.train.callbacks import ValidationCallback

    trainer = build_trainer(tiny_config(shards, f"{root}/eval{world}", *ARGS,
                                        f"train.resume={root}/run/checkpoints/step_4"))
    validation = next(cb for cb in trainer.callbacks if isinstance(cb, ValidationCallback))
    return validation.evaluate(trainer)["val_loss"]


@pytest.mark.multirank
def test_val_loss_is_the_same_at_world_1_and_2(tmp_path):
    args = {"shards": str(make_shards(tmp_path / "shards")), "root": str(tmp_path)}
    run_ranks(1, "tests.pipeline.train.test_validation_world_size:train", args, timeout=120)
    one = run_ranks(1, "tests.pipeline.train.test_validation_world_size:evaluate", args, timeout=120)[0]
    two = run_ranks(2, "tests.pipeline.train.test_validation_world_size:evaluate", args, timeout=120)
    assert two[0] == two[1]
    assert abs(one - two[0]) <= 1e-12 * abs(one), (one, two)
