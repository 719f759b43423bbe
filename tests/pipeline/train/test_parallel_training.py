"""The parallel layout through the trainer (fp32, gloo, the tiny OLMoE + OE + MTP model, global batch 4):

- 2 ranks, ZeRO-2 + EP2 + row-sharded OE (tables and expert shards outside DeepSpeed, expert gradients averaged
  over the expert-data-parallel group, global-norm clipping active: grad_norm ~2.7 > optim.grad_clip 1) give
  the per-step losses of one process within 1e-5 relative. Averaging the expert gradients over all
  data-parallel ranks (DeepSpeed's default for a parameter it does not know to be an expert) changes them by
  a factor 2 and the losses from step 2 on.
- the same layout stopped at step 4 and resumed reproduces the straight run exactly (table, experts and their
  optimizer states round-trip through the checkpoint);
- DP2 + sharded OE (ZeRO-0) saved at step 4 and resumed on ONE process continues with the same losses
  (the OE shards are resharded 2 -> 1 from the same step folder);
- ZeRO-3 with ep > 1 is refused with a one-line error naming parallel.ep;
- negative control: averaging the expert gradients over all data-parallel ranks moves the losses > 1e-4;
- the exported (consolidated) ZeRO-2 + EP2 + sharded-OE checkpoint gives, on one process, the logits of the
  trained distributed model (issue 6).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pipeline.config.base import ConfigError
from pipeline.train.external_params import ExternalParams
from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, step_losses, tiny_config, train_in_process

STEPS = 8
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", f"train.max_steps={STEPS}",
         "checkpoint.keep_last=0"]
EP2 = ["deepspeed.zero_stage=2", "parallel.ep=2", "parallel.table_optimizer=row_sparse_adam"]
DP2 = ["deepspeed.zero_stage=0"]


def probe_input():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 512, (2, 16), generator=g)


def train_and_probe(shards, run_dir, *overrides):
    """Train like train_in_process, then the logits of probe_input() from the (distributed) model."""
    from pipeline.train.build import build_trainer

    trainer = build_trainer(tiny_config(shards, run_dir, *overrides))
    trainer.fit()
    model = trainer.engine.module.eval()
    with torch.no_grad():
        logits = model.logits(probe_input())
    torch.save(logits, f"{run_dir}/probe_logits.pt")
    return step_losses(run_dir) if trainer.dist.rank == 0 else {}


def wrong_expert_averaging(self):
    """What DeepSpeed does to a parameter it does not know is an expert: average it over ALL data-parallel
    ranks, although they hold different experts."""
    for p in self.params:
        if p.kind == "experts" and p.param.grad is not None:
            dist.all_reduce(p.param.grad, group=self.groups.dp_group)
            p.param.grad.div_(self.groups.dp)


def two_rank_worker(rank, world, shards, root):
    out = {"ep2": train_and_probe(shards, f"{root}/ep2", *QUIET, *EP2, "checkpoint.every=0"),
           "ep2_stop": train_in_process(shards, f"{root}/ep2_resume", *QUIET, *EP2, "checkpoint.every=0",
                                        "train.hard_stop_step=4"),
           "ep2_resumed": train_in_process(shards, f"{root}/ep2_resume", *QUIET, *EP2, "checkpoint.every=0"),
           "dp2": train_in_process(shards, f"{root}/dp2", *QUIET, *DP2, "checkpoint.every=4")}
    reduce = ExternalParams.before_engine_step
    ExternalParams.before_engine_step = lambda self: (wrong_expert_averaging(self), reduce(self))[1]
    try:   # negative control: the equivalence test below must be able to see wrong expert averaging
        out["ep2_wrong"] = train_in_process(shards, f"{root}/ep2_wrong", *QUIET, *EP2, "checkpoint.every=0",
                                            "checkpoint.save_at_end=false")
    finally:
        ExternalParams.before_engine_step = reduce
    return out


def one_rank_worker(rank, world, shards, root):
    from pipeline.export.load import load_model

    model, _, _ = load_model(f"{root}/ep2/checkpoints/step_{STEPS}")   # consolidates ZeRO-2 + EP2 + OE shards
    with torch.no_grad():
        exported = model.logits(probe_input())
    distributed = torch.load(f"{root}/ep2/probe_logits.pt", weights_only=True)
    return {"export_logit_diff": float((exported - distributed).abs().max()),
            "logit_scale": float(distributed.abs().max()),
            "ep2_like": train_in_process(shards, f"{root}/one", *QUIET, "parallel.table_optimizer=row_sparse_adam",
                                         "checkpoint.every=0"),
            "dp2_like": train_in_process(shards, f"{root}/one_adamw", *QUIET, "checkpoint.every=0"),
            "dp2_resumed_on_1": train_in_process(shards, f"{root}/dp2", *QUIET, *DP2, "checkpoint.every=0",
                                                 f"train.resume={root}/dp2/checkpoints/step_4")}


def _close(a: dict, b: dict, steps, rel: float, what: str) -> None:
    for s in steps:
        assert abs(a[s] - b[s]) <= rel * abs(b[s]), (what, s, a[s], b[s])


@pytest.mark.multirank
def test_parallel_layouts_through_the_trainer(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    args = {"shards": shards, "root": str(tmp_path)}
    two = run_ranks(2, "tests.pipeline.train.test_parallel_training:two_rank_worker", args, timeout=300)[0]
    one = run_ranks(1, "tests.pipeline.train.test_parallel_training:one_rank_worker", args, timeout=240)[0]
    steps = range(1, STEPS + 1)
    ep2, ref = ({int(k): v for k, v in d.items()} for d in (two["ep2"], one["ep2_like"]))
    assert sorted(ep2) == list(steps) and ep2[STEPS] < ep2[1]
    _close(ep2, ref, steps, 1e-5, "ZeRO-2 + EP2 + sharded OE vs one process")

    resumed = {int(k): v for k, v in two["ep2_resumed"].items()}  # metrics.jsonl after resume: all 8 steps
    assert {int(k) for k in two["ep2_stop"]} == set(range(1, 5))
    for s in steps:
        assert resumed[s] == ep2[s], ("EP2 stop/resume", s, resumed[s], ep2[s])

    wrong = {int(k): v for k, v in two["ep2_wrong"].items()}
    assert max(abs(wrong[s] - ref[s]) / ref[s] for s in steps) > 1e-4, "wrong expert averaging went unnoticed"

    # launch/export.py's consolidation of the ZeRO-2 + EP2 + sharded-OE checkpoint = the trained model
    assert one["export_logit_diff"] <= 1e-5 * one["logit_scale"], one

    dp2 = {int(k): v for k, v in two["dp2"].items()}
    dp2_ref = {int(k): v for k, v in one["dp2_like"].items()}
    _close(dp2, dp2_ref, steps, 1e-5, "DP2 + sharded OE vs one process")
    on_one = {int(k): v for k, v in one["dp2_resumed_on_1"].items()}
    _close(on_one, dp2, range(5, STEPS + 1), 1e-5, "saved on 2 ranks, resumed on 1")


def test_zero3_with_expert_parallelism_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^parallel\.ep: .*zero_stage=3"):
        tiny_config(tmp_path / "shards", tmp_path / "run", "deepspeed.zero_stage=3", "parallel.ep=2")
