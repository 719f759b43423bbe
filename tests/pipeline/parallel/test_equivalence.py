"""Model-level equivalence of every parallel layout with one process (gloo CPU, same global batch and
seed): fp32 first-step gradients and 10 losses, fp64 parameters after 10 AdamW steps (see workers.py for
why parameters are compared in fp64), all within 1e-5 relative."""
from __future__ import annotations

import pytest

from tests.helpers.multirank import run_ranks

TOL = 1e-5
OT = "tiny-olmoe-ot"      # OLMoE + OE (n=3, k=2: 4 tables) + MTP depth 1


def check(results: list[dict], must_shard: tuple[str, ...]) -> None:
    for r in results:
        for prec in ("fp32", "fp64"):
            x = r[prec]
            assert len(x["loss_errors"]) == 10
            assert max(x["loss_errors"]) < TOL, (prec, x["loss_errors"])
            worst = max(x["param_errors"].items(), key=lambda kv: kv[1])
            if prec == "fp64":
                assert worst[1] < TOL, (prec, worst)
            assert x["moved"] > 1e-3, "training did not move the parameters; the comparison proves nothing"
        worst_grad = max(r["fp32"]["grad_errors"].items(), key=lambda kv: kv[1])
        assert worst_grad[1] < TOL, worst_grad
        for name in must_shard:
            assert any(name in n for n in r["fp32"]["sharded"]), (name, r["fp32"]["sharded"])


def run(world: int, model: str, layout: dict, overrides=(), table_opt="adamw"):
    return run_ranks(world, "tests.pipeline.parallel.workers:equivalence",
                     {"model": model, "overrides": list(overrides), "layout": layout, "table_opt": table_opt},
                     timeout=300)


def test_dp2_sharded_oe():
    check(run(2, OT, {}), ("over_encoding.table",))


def test_ep2():
    check(run(2, "tiny-olmoe", {"ep": 2}), ("mlp.experts.w_gate", "mlp.experts.w_down"))


def test_tp2_dense_mlp_oe_over_world():
    # dense SwiGLU + OE + MTP: column/row-parallel attention and MLP, vocab-parallel embedding and head;
    # the OE table is split over both tp ranks (oe_shard_group: world)
    check(run(2, "tiny-dense", {"tp": 2, "oe_shard_group": "world"},
              ["over_encoding.enabled=true", "over_encoding.m=1021", "over_decoding.mode=mtp"]),
          ("attention.q_proj.weight", "attention.o_proj.weight", "attention.q_norm.weight", "mlp.w_up.weight",
           "mlp.w_down.weight", "embed.weight", "lm_head.weight", "over_encoding.table"))


def test_ep2_sharded_oe_row_sparse_adam():
    check(run(2, OT, {"ep": 2}, table_opt="row_sparse_adam"), ("mlp.experts.w_up", "over_encoding.table"))


@pytest.mark.parametrize("layout", [{"tp": 2}, {"ep": 2}], ids=["tp2xdp2", "ep2xdp2"])
def test_four_ranks_2d(layout):
    check(run(4, OT, layout), ("over_encoding.table",) + (("q_proj",) if "tp" in layout else ("experts",)))
