"""Benchmark the row-sharded Over-Encoding lookup (paper §3.3) at world size 2 on gloo CPU.

Prints (1) bytes per token the OE lookup sends to other ranks (ids forward, vectors back, row gradients
backward; a rank's own segment is not counted) against the theoretical minimum (every UNIQUE remote row of
the batch moves its id once, its vector once and its gradient once) and against a lookup without dedupe,
and (2) the training-step time with the table row-sharded vs replicated (the replicated table's gradient
all-reduced over the ranks, as plain data parallelism would do).

    PYTHONPATH=. DS_ACCELERATOR=cpu python bench/oe_sharding.py [--m 200000] [--steps 5]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, args, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from pipeline.config.model import load_model_config
    from pipeline.config.parallel import ParallelConfig
    from pipeline.model import build_model
    from pipeline.parallel.parallelize import is_oe_table, parallelize, sync_gradients
    from pipeline.parallel.process_groups import init_process_groups
    from pipeline.parallel.table_optimizers import build_table_optimizer

    cfg = load_model_config("configs/model/tiny-olmoe-oe.yaml", [f"over_encoding.m={args.m}"])
    groups = init_process_groups(ParallelConfig(), cfg)
    g = torch.Generator().manual_seed(100 + rank)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g) for _ in range(args.steps + 1)]
    sent = {"bytes": 0}
    original = dist.all_to_all_single

    def counting(output, input, output_split_sizes=None, input_split_sizes=None, group=None, **kw):
        per_row = input[0].numel() * input.element_size() if input.numel() else 0
        mine = input_split_sizes[dist.get_rank(group)] if input_split_sizes else 0
        sent["bytes"] += (input.shape[0] - mine) * per_row if input.dim() else 0
        return original(output, input, output_split_sizes, input_split_sizes, group=group, **kw)

    results = {}
    for mode in ("replicated", "sharded"):
        torch.manual_seed(0)
        model = build_model(cfg)
        if mode == "sharded":
            model = parallelize(model, groups)
        tables = [p for p in model.parameters() if is_oe_table(p)]
        dense = [p for p in model.parameters() if not is_oe_table(p)]
        opts = [torch.optim.AdamW(dense, lr=1e-3), build_table_optimizer("adamw", tables, lr=1e-3)]
        times = []
        for step, ids in enumerate(batches):
            dist.barrier()
            t0 = time.perf_counter()
            if mode == "sharded" and step == 1:
                dist.all_to_all_single = counting
            model(ids).loss.backward()
            dist.all_to_all_single = original
            if mode == "sharded":
                sync_gradients(model, groups)
            else:                                   # plain data parallelism: every gradient all-reduced
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        results[mode] = sum(times[1:]) / (len(times) - 1)           # first step is warm-up
        results[mode + "_table_params_per_rank"] = sum(p.numel() for p in tables)
        if mode == "sharded":
            oe = model.over_encoding
            rows = (oe.table_ids(batches[1], None) + oe.row_offsets.view(-1, 1, 1)).flatten()
            owner = rows // oe.sharding.rows_per_rank
            unique = rows.unique()
            remote_unique = int((unique // oe.sharding.rows_per_rank != groups.oe_rank).sum())
            per_remote = 4 + 2 * oe.table.shape[1] * oe.table.element_size()
            tokens = batches[1].numel()
            results.update(tokens=tokens, measured=sent["bytes"] / tokens, minimum=remote_unique * per_remote / tokens,
                           no_dedupe=int((owner != groups.oe_rank).sum()) * per_remote / tokens,
                           tables=oe.num_tables, dim=oe.table.shape[1])
    out.put((rank, results))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=200_000, help="base rows per OE table")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    from tests.helpers.multirank import free_port
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port, world = free_port(), 2
    procs = [ctx.Process(target=worker, args=(r, world, args, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    res = dict(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    r = dict(res[0])
    for key in ("measured", "minimum", "no_dedupe"):   # both ranks hold the same number of tokens
        r[key] = (res[0][key] + res[1][key]) / 2
    print(f"OE: {r['tables']} tables of width {r['dim']}, m={args.m}, world 2, {r['tokens']} tokens per rank "
          "(averages over both ranks)")
    print(f"bytes/token sent to other ranks by the OE lookup: measured {r['measured']:.1f}, theoretical minimum "
          f"{r['minimum']:.1f} (unique remote rows: id + vector + gradient), without dedupe {r['no_dedupe']:.1f}")
    print(f"table parameters per rank: replicated {r['replicated_table_params_per_rank']:,}, "
          f"sharded {r['sharded_table_params_per_rank']:,}")
    print(f"step time: replicated {r['replicated'] * 1e3:.1f} ms, sharded {r['sharded'] * 1e3:.1f} ms, "
          f"ratio sharded/replicated {r['sharded'] / r['replicated']:.3f}")


if __name__ == "__main__":
    main()
