"""deepspeed.precision=bf16 in every layout the trainer accepts (gloo, the tiny OLMoE + OE + MTP model).

bf16 is DeepSpeed's torch_autocast: every parameter (engine and external shards), gradient, reduction and
optimizer state is fp32; matmuls run in bf16. Tolerances, from bf16's unit roundoff u = 2^-9 ~ 2e-3:
- bf16 vs fp32 (same seed, 20 steps): each matmul output carries a relative error <= u, independent over
  the output elements, so the mean loss moves by a fraction of u, and the Adam-normalised updates differ by
  O(u) relatively. Bound: |loss_bf16 - loss_fp32| <= u * loss (measured 0.15 u; product heads 0.26 u).
- bf16 multi-rank vs bf16 one process: sharded rows and EP tokens cross the all-to-all already in the matmul
  dtype, so the bf16-rounded operands are the ones the single process rounds, and the runs start identical;
  they differ by fp32 summation order in the gradient reductions (~1e-7 relative, what the fp32 equivalence
  tests bound at 1e-5), which flips the bf16 rounding of the few weights that sit on a rounding boundary
  (one ulp = 2u each) at the next forward. Over 20 steps this drifts the loss by a fraction of u: bound
  0.5 u (measured 0.12 u for ZeRO-2 + EP2 + sharded OE, 0.09 u for ZeRO-3 + sharded OE). tp=2 runs
  megatron-core's layers outside CPU autocast (fp32, see pipeline/parallel/tensor_parallel.py), so on CPU
  it is held to the bf16-vs-fp32 bound (measured 0.21 u). The layouts' exactness is proven by the fp32
  twins of these runs (test_parallel_training.py, test_tp_training.py, test_zero_exactness.py).
- resume in bf16 is exact (== uninterrupted), the exported checkpoint reproduces the trained model's fp32
  logits within 1e-5, and no optimizer starts with a phantom step (Adam's step count == steps taken).
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, step_losses, tiny_config
from tests.pipeline.train.test_parallel_training import probe_input

U = 2.0 ** -9
STEPS = 20
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", f"train.max_steps={STEPS}",
         "checkpoint.every=0", "checkpoint.keep_last=0"]
BF16 = ["deepspeed.precision=bf16"]
EP2_OE = ["deepspeed.zero_stage=2", "parallel.ep=2"]
TP2 = ["deepspeed.zero_stage=1", "parallel.tp=2"]
Z3_OE = ["deepspeed.zero_stage=3"]


def adam_steps(trainer) -> set[int]:
    """Adam's step counts in every optimizer of the run (engine's client optimizer and the external ones)."""
    opts = [trainer.bad_steps.optimizers[0]]
    if trainer.external is not None:
        opts += [opt for opt, _ in trainer.external.optimizers]
    return {int(state["step"]) for opt in opts for state in opt.state.values() if "step" in state}


def run(shards, run_dir, *overrides, probe: bool = False):
    """Train; rank 0 returns {"losses": {step: loss}, "adam_steps": [...]}. probe: save the trained model's
    logits of probe_input() (fp32, every rank runs the forward: it has collectives) to run_dir/probe.pt."""
    from pipeline.train.build import build_trainer

    trainer = build_trainer(tiny_config(shards, run_dir, *QUIET, *overrides))
    trainer.fit()
    if probe:
        with torch.no_grad():
            logits = trainer.engine.module.eval().logits(probe_input())
        if trainer.dist.rank == 0:
            torch.save(logits, f"{run_dir}/probe.pt")
    out = {"losses": step_losses(run_dir), "adam_steps": sorted(adam_steps(trainer))}
    return out if trainer.dist.rank == 0 else {}


def two_rank_worker(rank, world, shards, root):
    # The EP2 runs come first: a process that already ran a ZeRO-3 or tp engine is not a clean start
    # (DeepSpeed and megatron-core keep process-global state), and the resume is compared for equality.
    out = {"ep2": run(shards, f"{root}/ep2", *BF16, *EP2_OE, "checkpoint.save_at_end=true", probe=True)}
    run(shards, f"{root}/ep2_resume", *BF16, *EP2_OE, "train.hard_stop_step=8", "checkpoint.save_at_end=true")
    out["ep2_resumed"] = run(shards, f"{root}/ep2_resume", *BF16, *EP2_OE)
    out["tp2"] = run(shards, f"{root}/tp2", *BF16, *TP2)
    out["z3"] = run(shards, f"{root}/z3", *BF16, *Z3_OE)
    return out


def one_rank_worker(rank, world, shards, root):
    from pipeline.export.load import load_model

    out = {"fp32": run(shards, f"{root}/fp32"), "bf16": run(shards, f"{root}/bf16", *BF16),
           "bf16_ckpt": run(shards, f"{root}/bf16_ckpt", *BF16, "model.activation_checkpointing=true"),
           "product_fp32": run(shards, f"{root}/pr32", "model.over_decoding.mode=product", "model.over_decoding.n=3"),
           "product_bf16": run(shards, f"{root}/pr16", *BF16, "model.over_decoding.mode=product",
                               "model.over_decoding.n=3")}
    # the exported bf16 EP2 + sharded-OE checkpoint = the trained weights (fp32 masters)
    model, _, _ = load_model(f"{root}/ep2/checkpoints/step_{STEPS}")
    with torch.no_grad():
        exported = model.logits(probe_input())
    trained = torch.load(f"{root}/ep2/probe.pt", weights_only=True)
    out["export_diff"] = float((exported - trained).abs().max())
    out["logit_scale"] = float(trained.abs().max())
    return out


def losses(entry: dict) -> dict[int, float]:
    return {int(k): v for k, v in entry["losses"].items()}


def assert_close(a: dict, b: dict, rel: float, what: str) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), what
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in a)
    assert worst <= rel, f"{what}: worst relative loss difference {worst:.2e} > {rel:.2e}"


@pytest.mark.multirank
@pytest.mark.slow
def test_bf16_in_every_layout(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    args = {"shards": shards, "root": str(tmp_path)}
    two = run_ranks(2, "tests.pipeline.train.test_bf16:two_rank_worker", args, timeout=500)[0]
    one = run_ranks(1, "tests.pipeline.train.test_bf16:one_rank_worker", args, timeout=400)[0]
    fp32, bf16 = losses(one["fp32"]), losses(one["bf16"])
    assert bf16[STEPS] < bf16[1] - 0.5, "bf16 trains"
    assert bf16 != fp32, "bf16 computes in bf16 (the losses differ from fp32 in the low digits)"
    assert_close(bf16, fp32, U, "bf16 vs fp32, one process")
    assert_close(losses(one["product_bf16"]), losses(one["product_fp32"]), U, "bf16 vs fp32, product heads")
    assert_close(losses(one["bf16_ckpt"]), bf16, 1e-6, "bf16 with activation checkpointing")
    assert_close(losses(two["ep2"]), bf16, 0.5 * U, "bf16 ZeRO-2 + EP2 + sharded OE vs one process")
    assert_close(losses(two["z3"]), bf16, 0.5 * U, "bf16 ZeRO-3 + sharded OE vs one process")
    assert_close(losses(two["tp2"]), bf16, U, "bf16 tp=2 (megatron layers fp32 on CPU) vs one process")
    assert losses(two["ep2_resumed"]) == losses(two["ep2"]), "bf16 stop at 8 + resume == uninterrupted"
    for name in ("fp32", "bf16", "product_bf16"):
        assert one[name]["adam_steps"] == [STEPS], (name, one[name]["adam_steps"])
    for name in ("ep2", "tp2", "z3", "ep2_resumed"):
        assert two[name]["adam_steps"] == [STEPS], (name, two[name]["adam_steps"])
    assert one["export_diff"] <= 1e-5 * one["logit_scale"], one
