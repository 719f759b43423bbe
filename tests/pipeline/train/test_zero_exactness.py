"""fp32 on gloo: ZeRO 1/2/3 reproduce ZeRO-0's per-step losses at world size 2, and world size 2 reproduces
world size 1 at the same global batch (there: 2 accumulation micro-steps instead of 2 ranks)."""
from __future__ import annotations

import pytest

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, train_in_process

STEPS = 10
QUIET = ["checkpoint.every=0", "checkpoint.save_at_end=false", "eval.every=0", "eval.at_end=false",
         "log.tensorboard=false", f"train.max_steps={STEPS}"]


def stages_worker(rank, world, shards, root):
    return {str(stage): train_in_process(shards, f"{root}/zero{stage}", f"deepspeed.zero_stage={stage}", *QUIET)
            for stage in (0, 1, 2, 3)}


def single_worker(rank, world, shards, root):
    return train_in_process(shards, f"{root}/ws1", *QUIET)


@pytest.mark.multirank
def test_zero_stages_and_world_sizes_agree(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    two = run_ranks(2, "tests.pipeline.train.test_zero_exactness:stages_worker",
                    {"shards": shards, "root": str(tmp_path)}, timeout=240)[0]
    one = run_ranks(1, "tests.pipeline.train.test_zero_exactness:single_worker",
                    {"shards": shards, "root": str(tmp_path)}, timeout=120)[0]
    base = two["0"]
    assert sorted(int(s) for s in base) == list(range(1, STEPS + 1))
    assert base[str(STEPS)] < base["1"]  # it trains
    for stage in ("1", "2", "3"):
        for step, loss in base.items():
            assert abs(two[stage][step] - loss) <= 1e-5, (stage, step, two[stage][step], loss)
    for step, loss in base.items():
        assert abs(one[step] - loss) <= 1e-5, ("ws1", step, one[step], loss)


def bf16_worker(rank, world, shards, root):
    return {p: train_in_process(shards, f"{root}/{p}", f"deepspeed.precision={p}", "deepspeed.zero_stage=2",
                                *QUIET[:-1], "train.max_steps=3") for p in ("fp32", "bf16")}


def test_bf16_trains_close_to_fp32(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    runs = run_ranks(1, "tests.pipeline.train.test_zero_exactness:bf16_worker",
                     {"shards": shards, "root": str(tmp_path)}, timeout=120)[0]
    for step, loss in runs["fp32"].items():
        assert abs(runs["bf16"][step] - loss) < 0.05 * loss, (step, runs["bf16"][step], loss)
