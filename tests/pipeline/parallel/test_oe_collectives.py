"""The sharded OE lookup uses exactly one all_to_all pair forward and one all_to_all backward per step,
whatever k and n (all tables share one stacked table), and no collective ever moves a full table."""
from __future__ import annotations

import torch
import torch.distributed as dist

from tests.helpers.multirank import run_ranks

COLLECTIVES = ("all_to_all_single", "all_to_all", "all_gather_into_tensor", "all_gather", "all_reduce",
               "reduce_scatter_tensor", "broadcast", "send", "recv", "reduce", "gather", "scatter")


def count_worker(rank: int, world: int, configs: list[list[int]]) -> list[dict]:
    from pipeline.config.model import load_model_config
    from pipeline.config.parallel import ParallelConfig
    from pipeline.model import build_model
    from pipeline.parallel.parallelize import parallelize, sync_gradients
    from pipeline.parallel.process_groups import init_process_groups

    calls: list[tuple[str, int, str]] = []
    phase = ["idle"]

    def wrap(name):
        original = getattr(dist, name)

        def counted(*args, **kwargs):
            sizes = [a.numel() for a in args if isinstance(a, torch.Tensor)]
            calls.append((name, max(sizes, default=0), phase[0]))
            return original(*args, **kwargs)
        return original, counted

    originals = {}
    results = []
    try:
        for name in COLLECTIVES:
            originals[name], counted = wrap(name)
            setattr(dist, name, counted)
        for n, k in configs:
            cfg = load_model_config("configs/model/tiny-dense.yaml",
                                    ["over_encoding.enabled=true", f"over_encoding.n={n}", f"over_encoding.k={k}",
                                     "over_encoding.m=4099", "d_model=72", "n_heads=4"])
            groups = init_process_groups(ParallelConfig(), cfg)
            torch.manual_seed(0)
            model = parallelize(build_model(cfg), groups)
            table = model.over_encoding.table
            full_numel = model.over_encoding.sharding.global_rows * table.shape[1]
            ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(rank))
            calls.clear()
            phase[0] = "forward"
            loss = model(ids).loss
            phase[0] = "backward"
            loss.backward()
            phase[0] = "sync"
            sync_gradients(model, groups)
            phase[0] = "idle"
            per_phase = {p: [c for c in calls if c[2] == p] for p in ("forward", "backward", "sync")}
            results.append({
                "tables": cfg.over_encoding.num_tables,
                "a2a": {p: sum(c[0].startswith("all_to_all") for c in v) for p, v in per_phase.items()},
                "others_fwd": sorted({c[0] for c in per_phase["forward"] if not c[0].startswith("all_to_all")}),
                "largest": max(c[1] for c in calls), "full_table": full_numel,
                "lookup_payload": ids.numel() * cfg.over_encoding.num_tables * table.shape[1],
                "largest_a2a": max(c[1] for c in calls if c[0].startswith("all_to_all")),
                "shard_rows": table.shape[0], "global_rows": model.over_encoding.sharding.global_rows,
            })
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return results


def test_one_all_to_all_pair_forward_one_backward_and_no_full_table():
    configs = [[2, 1], [3, 2], [4, 3]]            # 1, 4 and 9 tables
    for rank_results in run_ranks(2, "tests.pipeline.parallel.test_oe_collectives:count_worker",
                                  {"configs": configs}, timeout=240):
        assert [r["tables"] for r in rank_results] == [1, 4, 9]
        for r in rank_results:
            assert r["a2a"] == {"forward": 2, "backward": 1, "sync": 0}, r
            assert r["others_fwd"] == ["all_gather_into_tensor"], r      # the W*W split sizes only
            assert 0 < r["shard_rows"] <= -(-r["global_rows"] // 2), r              # really sharded
            assert r["largest_a2a"] <= 2 * r["lookup_payload"], r      # at most every rank's rows
            assert r["largest"] < r["full_table"] / 2, r                  # nothing near a full table moves
