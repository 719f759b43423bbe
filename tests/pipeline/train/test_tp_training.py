"""Tensor parallelism through the trainer (fp32, gloo): 2 ranks with parallel.tp=2 (megatron-core column/row-
parallel attention and dense SwiGLU, vocab-parallel embedding and head, megatron's groups handed to DeepSpeed
as `mpu`) under ZeRO-1, against one process with the same global batch and seed.

The model is the tiny dense SwiGLU with Over-Encoding (4 tables, split over both tp ranks with
oe_shard_group "world") and MTP depth 1. Both tp ranks read the same data (dp = 1), so the one-process run
sees exactly the same micro-batches; per-step losses must agree within 1e-5 relative. The learning rate is
high enough that every step changes the loss visibly, and clipping is active (grad_norm 1.8-2.7 > grad_clip
1), so the pre-clip global norm - DeepSpeed's, over its ZeRO partitions with the mpu, plus the external OE
shards - is compared too. Negative control: without marking the tp shards of our own modules
`tensor_model_parallel`, DeepSpeed counts only tp rank 0's half of them; the norm and then the losses leave
the tolerance.
(Without the mpu at all DeepSpeed refuses to start: its batch check sees dp = world = 2.)
"""
from __future__ import annotations

import pytest
import torch.distributed as dist

from pipeline.train.parallel_run import ParallelRun

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, read_metrics, train_in_process

STEPS = 6
DENSE_OT = ["model=../model/tiny-dense.yaml", "model.over_encoding.enabled=true", "model.over_encoding.m=1021",
            "model.over_decoding.mode=mtp", "model.over_decoding.depth=1"]
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", f"train.max_steps={STEPS}",
         "checkpoint.every=0", "checkpoint.save_at_end=false", "optim.grad_clip=1.0", *DENSE_OT]
TP2 = ["deepspeed.zero_stage=1", "parallel.tp=2", "parallel.oe_shard_group=world"]


def _run(shards, run_dir, layout):
    train_in_process(shards, run_dir, *QUIET, *layout)
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(run_dir)} if dist.get_rank() == 0 else {}


def worker(rank, world, shards, root, layout):
    out = {"run": _run(shards, f"{root}/w{world}", layout)}
    if world > 1:   # negative control: our TP norm shards not marked tensor_model_parallel, so DeepSpeed's
        mark = ParallelRun._mark_tensor_parallel    # global norm counts only tp rank 0's half of them
        ParallelRun._mark_tensor_parallel = lambda self, model: None
        try:
            out["unmarked"] = _run(shards, f"{root}/unmarked", layout)
        finally:
            ParallelRun._mark_tensor_parallel = mark
    return out


@pytest.mark.multirank
def test_tp2_zero1_matches_one_process(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    args = {"shards": shards, "root": str(tmp_path)}
    tp2 = run_ranks(2, "tests.pipeline.train.test_tp_training:worker", {**args, "layout": TP2}, timeout=240)[0]
    one = run_ranks(1, "tests.pipeline.train.test_tp_training:worker", {**args, "layout": []}, timeout=120)[0]
    unmarked = {int(k): v for k, v in tp2["unmarked"].items()}
    tp2, one = ({int(k): v for k, v in d["run"].items()} for d in (tp2, one))
    steps = list(range(1, STEPS + 1))
    assert sorted(tp2) == steps and sorted(one) == steps
    assert tp2[STEPS][0] < tp2[1][0]
    assert min(one[s][1] for s in steps) > 1.0, "clipping should be active (grad_norm > optim.grad_clip)"
    for s in steps:   # (loss, pre-clip global grad norm)
        for got, want, what in zip(tp2[s], one[s], ("loss", "grad_norm")):
            assert abs(got - want) <= 1e-5 * abs(want), ("TP2 vs one process", what, s, got, want)
    # the negative control moves the norm by ~30 % and the losses by up to ~8e-5 (measured): both checks see it
    assert max(abs(unmarked[s][1] - one[s][1]) / one[s][1] for s in steps) > 0.1, "unmarked TP shards unnoticed"
    assert max(abs(unmarked[s][0] - one[s][0]) / one[s][0] for s in steps) > 1e-5, "unmarked TP shards unnoticed"
