"""bf16 keeps fp32 master weights for every parameter, including those stepped outside DeepSpeed.

With lr = 1e-6 every AdamW update (~lr per element) is ~1% of a bf16 ulp at the weights' scale (init std
0.02: ulp = 2^-13 ~ 1.2e-4), so a bf16-stored weight would never move. Over 10 steps (2 ranks, ZeRO-2 +
EP2 + row-sharded OE) the bf16 run must move the dense weights, its OE table shard and its expert shards as
the fp32 run does: ||delta_bf16 - delta_fp32|| <= 0.1 ||delta_fp32|| per group (the gradients differ by
bf16 compute, Adam's normalised update by much less). Negative control: the same bf16 run with the external
shards stored in bf16 leaves them where they were (relative difference ~1), and the check catches it.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, tiny_config

ARGS = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "train.max_steps=10", "checkpoint.every=0",
        "checkpoint.save_at_end=false", "optim.lr=1e-6", "deepspeed.zero_stage=2", "parallel.ep=2"]


def weights(trainer) -> dict[str, dict[str, torch.Tensor]]:
    groups = {"dense": {n: p.detach().float().clone() for n, p in trainer.engine.module.named_parameters()}}
    for p in trainer.external.params:
        groups.setdefault(p.kind, {})[p.name] = p.param.detach().float().clone()
    return groups


def deltas(shards, run_dir, *overrides, external_in_bf16: bool = False):
    from pipeline.train.build import build_trainer

    trainer = build_trainer(tiny_config(shards, run_dir, *ARGS, *overrides))
    if external_in_bf16:   # the negative control: no fp32 master for the parameters outside the engine
        for p in trainer.external.params:
            p.param.data = p.param.data.to(torch.bfloat16)
    before = weights(trainer)
    trainer.fit()
    after = weights(trainer)
    return {g: {n: after[g][n] - before[g][n] for n in before[g]} for g in before}


def worker(rank, world, shards, root):
    ref = deltas(shards, f"{root}/fp32")
    out = {}
    for name, kwargs in (("bf16", {}), ("bf16_external_storage", {"external_in_bf16": True})):
        got = deltas(shards, f"{root}/{name}", "deepspeed.precision=bf16", **kwargs)
        out[name] = {g: float(torch.cat([(got[g][n] - ref[g][n]).flatten() for n in ref[g]]).norm()
                              / torch.cat([ref[g][n].flatten() for n in ref[g]]).norm()) for g in ref}
    out["moved"] = {g: float(torch.cat([d.flatten() for d in ref[g].values()]).abs().max()) for g in ref}
    return out if rank == 0 else {}


@pytest.mark.multirank
def test_fp32_masters_move_below_bf16_resolution(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    out = run_ranks(2, "tests.pipeline.train.test_bf16_master_weights:worker",
                    {"shards": shards, "root": str(tmp_path)}, timeout=300)[0]
    assert set(out["bf16"]) == {"dense", "oe_table", "experts"}, out
    for group, biggest in out["moved"].items():   # the fp32 run moves every group by less than a bf16 ulp
        assert 0 < biggest < 2.0 ** -13, (group, biggest)
    for group, rel in out["bf16"].items():
        assert rel <= 0.1, (group, rel, out)
    for group in ("oe_table", "experts"):
        assert out["bf16_external_storage"][group] > 0.5, ("negative control not caught", group, out)
