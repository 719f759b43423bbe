"""Resume on another layout (fp32, gloo, the tiny OLMoE + OE + MTP model, global batch 8, 8 steps).

A checkpoint of step 4 saved on 2 ranks with ZeRO-2 + EP2 + row-sharded OE is resumed
- on 1 process with ZeRO-0 (experts back inside DeepSpeed, OE rows 2 -> 1),
- on 4 ranks with ZeRO-1 + EP4 (experts 4 per rank -> 2 per rank, OE rows 2 -> 4),
and a checkpoint of the single-process run is resumed on 2 ranks with ZeRO-2 + EP2 (experts leave DeepSpeed)
and with ZeRO-3 (every dense parameter partitioned), a ZeRO-3 world-2 checkpoint on one process;
the dense tiny model with tp=2 (ZeRO-1) is resumed with tp=1; and the world-2 checkpoint converted offline
(pipeline.train.reshard) for one process is resumed there. In every case steps 5-8 must equal the
uninterrupted single-process run within 1e-5 relative: the parameters AND their Adam moments and step count
were re-partitioned (pipeline/train/layout_free.py). Negative control: the same world-2 -> world-1 resume
with the optimizer state left fresh moves the losses by more than 1e-4.

bf16 twin (deepspeed.precision=bf16: torch autocast, every parameter and optimizer state fp32, so the
layout-free state round-trips exactly as in fp32): world 2 ZeRO-2 EP2 -> world 1. The 2-rank steps 1-4 differ
from the single process by fp32 summation order, which flips the bf16 rounding of the few operands on a
rounding boundary (test_bf16.py: bound 0.5 u over 20 steps, u = 2^-9); the resumed steps 5-8 inherit that
drift and nothing else, so the bound is the same 0.5 u relative.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from pipeline.train.layout_free import LayoutFreeState
from pipeline.train.reshard import reshard
from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, train_in_process

STEPS, SAVED = 8, 4
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", f"train.max_steps={STEPS}",
         "checkpoint.keep_last=0", "parallel.table_optimizer=row_sparse_adam",
         # 8 sequences of micro batch 2: 4 micro-batches on 1 rank, 1 on each of 4 ranks (the loss of a step is
         # the mean of its micro-batch means, so the micro-batch size must not change between the runs)
         "train.global_batch_size=8", "train.micro_batch_size=2"]
EP2 = ["deepspeed.zero_stage=2", "parallel.ep=2"]
EP4_ON_4 = ["deepspeed.zero_stage=1", "parallel.ep=4"]
DENSE_OT = ["model=../model/tiny-dense.yaml", "model.over_encoding.enabled=true", "model.over_encoding.m=1021",
            "model.over_decoding.mode=mtp", "model.over_decoding.depth=1", "parallel.table_optimizer=adamw"]
TP2 = ["deepspeed.zero_stage=1", "parallel.tp=2", "parallel.oe_shard_group=world"]
BF16 = ["deepspeed.precision=bf16"]
U = 2.0 ** -9   # bf16 unit roundoff


def _resume(root: str, name: str) -> str:
    return f"train.resume={root}/{name}/checkpoints/step_{SAVED}"


def one_rank_worker(rank, world, shards, root):
    """The references (straight runs, saving step 4), then the resumes onto one process."""
    out = {"ref": train_in_process(shards, f"{root}/ref", *QUIET, f"checkpoint.every={SAVED}"),
           "dense_ref": train_in_process(shards, f"{root}/dense_ref", *QUIET, *DENSE_OT, "checkpoint.every=0"),
           "from_ep2": train_in_process(shards, f"{root}/from_ep2", *QUIET, "checkpoint.every=0",
                                        _resume(root, "ep2")),
           "from_tp2": train_in_process(shards, f"{root}/from_tp2", *QUIET, *DENSE_OT, "checkpoint.every=0",
                                        _resume(root, "tp2")),
           "from_z3": train_in_process(shards, f"{root}/from_z3", *QUIET, "checkpoint.every=0", _resume(root, "z3")),
           "bf16_ref": train_in_process(shards, f"{root}/bf16_ref", *QUIET, *BF16, "checkpoint.every=0"),
           "bf16_from_ep2": train_in_process(shards, f"{root}/bf16_from_ep2", *QUIET, *BF16, "checkpoint.every=0",
                                             _resume(root, "ep2_bf16"))}
    lines: list[str] = []   # the offline conversion, then a resume on its target layout
    reshard(Path(root) / "ep2" / "checkpoints" / f"step_{SAVED}", Path(root) / "resharded", world=1, ep=1,
            zero_stage=0, log=lines.append)
    out["reshard_log"] = lines
    out["from_resharded"] = train_in_process(shards, f"{root}/from_resharded", *QUIET, "checkpoint.every=0",
                                             f"train.resume={root}/resharded")
    load = LayoutFreeState.load
    LayoutFreeState.load = functools.partialmethod(load, optimizer_state=False)
    try:    # negative control: parameters re-partitioned, optimizer state fresh
        out["fresh_optimizer"] = train_in_process(shards, f"{root}/fresh", *QUIET, "checkpoint.every=0",
                                                  "checkpoint.save_at_end=false", _resume(root, "ep2"))
    finally:
        LayoutFreeState.load = load
    return out


def two_rank_saver(rank, world, shards, root):
    train_in_process(shards, f"{root}/ep2", *QUIET, *EP2, f"checkpoint.every={SAVED}",
                     f"train.hard_stop_step={SAVED}")
    train_in_process(shards, f"{root}/tp2", *QUIET, *DENSE_OT, *TP2, f"checkpoint.every={SAVED}",
                     f"train.hard_stop_step={SAVED}")
    train_in_process(shards, f"{root}/z3", *QUIET, "deepspeed.zero_stage=3", f"checkpoint.every={SAVED}",
                     f"train.hard_stop_step={SAVED}")
    train_in_process(shards, f"{root}/ep2_bf16", *QUIET, *EP2, *BF16, f"checkpoint.every={SAVED}",
                     f"train.hard_stop_step={SAVED}")


def two_rank_resumer(rank, world, shards, root):
    return {"from_one": train_in_process(shards, f"{root}/from_one", *QUIET, *EP2, "checkpoint.every=0",
                                         _resume(root, "ref")),
            "z3_from_one": train_in_process(shards, f"{root}/z3_from_one", *QUIET, "deepspeed.zero_stage=3",
                                            "checkpoint.every=0", _resume(root, "ref"))}


def four_rank_resumer(rank, world, shards, root):
    return {"from_ep2": train_in_process(shards, f"{root}/on4", *QUIET, *EP4_ON_4, "checkpoint.every=0",
                                         _resume(root, "ep2"))}


def _losses(d: dict) -> dict[int, float]:
    return {int(k): v for k, v in d.items()}


def _assert_continues(resumed: dict, ref: dict, what: str) -> None:
    resumed, ref = _losses(resumed), _losses(ref)
    assert sorted(resumed) == list(range(SAVED + 1, STEPS + 1)), (what, sorted(resumed))
    for s in resumed:
        assert abs(resumed[s] - ref[s]) <= 1e-5 * abs(ref[s]), (what, s, resumed[s], ref[s])


@pytest.mark.multirank
def test_a_checkpoint_resumes_on_other_layouts(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    args = {"shards": shards, "root": str(tmp_path)}
    run_ranks(2, "tests.pipeline.train.test_elastic_resume:two_rank_saver", args, timeout=300)
    one = run_ranks(1, "tests.pipeline.train.test_elastic_resume:one_rank_worker", args, timeout=300)[0]
    ref = _losses(one["ref"])
    assert sorted(ref) == list(range(1, STEPS + 1)) and ref[STEPS] < ref[1]
    _assert_continues(one["from_ep2"], ref, "world 2 ZeRO-2 EP2 -> world 1 ZeRO-0")
    _assert_continues(one["from_z3"], ref, "world 2 ZeRO-3 -> world 1 ZeRO-0")
    _assert_continues(one["from_tp2"], one["dense_ref"], "tp 2 ZeRO-1 -> tp 1 ZeRO-0")
    _assert_continues(one["from_resharded"], ref, "python -m pipeline.train.reshard to world 1, then resume")
    log = "\n".join(one["reshard_log"])
    assert "(world 2, tp 1, ep 2, ZeRO-2)" in log and "(world 1, tp 1, ep 1, ZeRO-0)" in log, log
    assert "over_encoding.table" in log and "-> 1 row shards" in log and "consolidated whole" in log, log
    bf16, bf16_ref = _losses(one["bf16_from_ep2"]), _losses(one["bf16_ref"])
    for s in bf16:   # bf16 twin: see the bound in the module docstring
        assert abs(bf16[s] - bf16_ref[s]) <= 0.5 * U * bf16_ref[s], ("bf16 world 2 -> 1", s, bf16[s], bf16_ref[s])
    fresh = _losses(one["fresh_optimizer"])
    assert max(abs(fresh[s] - ref[s]) / ref[s] for s in fresh) > 1e-4, "a reset optimizer state went unnoticed"

    two = run_ranks(2, "tests.pipeline.train.test_elastic_resume:two_rank_resumer", args, timeout=300)[0]
    _assert_continues(two["from_one"], ref, "world 1 ZeRO-0 -> world 2 ZeRO-2 EP2")
    _assert_continues(two["z3_from_one"], ref, "world 1 ZeRO-0 -> world 2 ZeRO-3")
    four = run_ranks(4, "tests.pipeline.train.test_elastic_resume:four_rank_resumer", args, timeout=400)[0]
    _assert_continues(four["from_ep2"], ref, "world 2 ZeRO-2 EP2 -> world 4 ZeRO-1 EP4")
