"""Per-rank materialisation of a meta-built model (parallelize.materialize_local): every rank's shard of every
parameter (OE table rows over 2 and 3 ranks with boundaries that cut init blocks and rows anywhere, experts
over ep = 2, TP slices over tp = 2 incl. the row-parallel input-dim splits) equals the same positions of
the single-process initialisation, and the rank never allocates what it does not own."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.multirank import run_ranks


def worker(rank, world, model, overrides, layout, block):
    from pipeline.config.parallel import ParallelConfig
    from pipeline.model import build_model
    from pipeline.model import init as init_mod
    from pipeline.parallel.parallelize import materialize_local, parallelize
    from pipeline.parallel.process_groups import init_process_groups
    from pipeline.parallel.shard_info import local_slice
    from tests.pipeline.parallel.workers import model_config

    if block:
        init_mod.BLOCK = block                    # small blocks: shard bounds fall inside blocks
    cfg = model_config(model, overrides)
    groups = init_process_groups(ParallelConfig(**layout), cfg)
    reference = dict(build_model(cfg, seed=5).named_parameters())
    par = parallelize(build_model(cfg, device="meta", seed=5), groups)
    assert all(p.is_meta for p in par.parameters())      # the swap allocated nothing
    materialize_local(par, "cpu")
    out = {"sharded": [], "mismatch": [], "table_rows": None}
    for name, p in par.named_parameters():
        want = local_slice(reference[name].detach(), p)
        if tuple(want.shape) != tuple(reference[name].shape):
            out["sharded"].append(name)
        if want.shape != p.shape or not torch.equal(p, want):
            out["mismatch"].append(name)
    if par.over_encoding is not None:
        out["table_rows"] = list(par.over_encoding.sharding.bounds())
        out["offsets_ok"] = bool(torch.equal(par.over_encoding.row_offsets,
                                             build_model(cfg, seed=5).over_encoding.row_offsets))
        ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(rank))
        out["loss"] = par(ids).loss.item()    # the materialised shards run forward (lookups, buffers)
    return out


def run(world, model, layout, overrides=(), block=None):
    return run_ranks(world, "tests.pipeline.parallel.test_init_shards:worker",
                     {"model": model, "overrides": list(overrides), "layout": layout, "block": block},
                     timeout=240)


@pytest.mark.parametrize("world,block", [(2, 1000), (3, None), (3, 1000)], ids=["w2-b1000", "w3", "w3-b1000"])
def test_oe_table_rows(world, block):
    results = run(world, "tiny-olmoe-oe", {}, block=block)
    bounds = [r["table_rows"] for r in results]
    assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1][1] == 4 * 4099 + 12     # all rows covered once (m + 2t rows per table)
    assert (bounds[1][0] * 16) % (block or 2**20)     # rank 1's first element is inside a block
    for r in results:
        assert r["sharded"] == ["over_encoding.table"] and not r["mismatch"], r
        assert r["offsets_ok"]


def test_experts_ep2_and_oe():
    results = run(2, "tiny-olmoe-ot", {"ep": 2}, block=1000)
    for r in results:
        assert not r["mismatch"], r["mismatch"]
        assert "over_encoding.table" in r["sharded"]
        assert {"layers.0.mlp.experts.w_gate", "layers.1.mlp.experts.w_down",
                "mtp.0.block.mlp.experts.w_up"} <= set(r["sharded"])


def test_tp2_slices():
    results = run(2, "tiny-dense", {"tp": 2, "oe_shard_group": "world"},
                  ["over_encoding.enabled=true", "over_encoding.m=1021", "over_decoding.mode=mtp"], block=1000)
    for r in results:
        assert not r["mismatch"], r["mismatch"]
        assert {"layers.0.attention.q_proj.weight", "layers.0.attention.o_proj.weight",
                "layers.0.attention.q_norm.weight", "layers.0.mlp.w_down.weight", "embed.weight",
                "lm_head.weight", "over_encoding.table"} <= set(r["sharded"])
