"""parallel.oe_prefetch: the next micro-batch's sharded OE lookup runs during the current one, and the run is
the same run: identical losses to the synchronous lookup (fp32 and bf16, with expert parallelism issuing its
own all-to-alls meanwhile), every lookup of a training step prefetched."""
from __future__ import annotations

import pytest

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, train_in_process

# global batch 4 = micro batch 1 x 2 ranks x 2 accumulation steps: every step has a micro-batch to prefetch
ARGS = ["train.max_steps=4", "train.micro_batch_size=1", "eval.every=2", "eval.batches=2", "log.tensorboard=false",
        "checkpoint.every=0", "checkpoint.save_at_end=false"]


def train(rank, world, shards, root, name, extra):
    from pipeline.train.build import build_trainer
    from tests.pipeline.train.runs import step_losses, tiny_config

    trainer = build_trainer(tiny_config(shards, f"{root}/{name}", *ARGS, *extra))
    trainer.fit()
    prefetcher = trainer.engine.module.over_encoding.prefetcher
    counts = None if prefetcher is None else [prefetcher.prefetched]
    return {"losses": step_losses(f"{root}/{name}") if rank == 0 else {}, "counts": counts}


@pytest.mark.multirank
@pytest.mark.parametrize("extra", [[], ["parallel.ep=2", "deepspeed.zero_stage=1", "deepspeed.precision=bf16"]],
                         ids=["fp32", "bf16-ep2-zero1"])
def test_prefetched_lookups_give_the_same_run(tmp_path, extra):
    shards = str(make_shards(tmp_path / "shards"))
    target = "tests.pipeline.parallel.test_oe_prefetch:train"
    off = run_ranks(2, target, {"shards": shards, "root": str(tmp_path), "name": "off", "extra": extra}, timeout=240)
    on = run_ranks(2, target, {"shards": shards, "root": str(tmp_path), "name": "on",
                               "extra": [*extra, "parallel.oe_prefetch=true"]}, timeout=240)
    assert off[0]["counts"] is None
    assert on[0]["losses"] == off[0]["losses"] and len(on[0]["losses"]) == 4      # bit for bit
    # 4 steps x 2 micro-batches, all prefetched; validation (2 passes) looked up synchronously
    assert [r["counts"][0] for r in on] == [8, 8]
