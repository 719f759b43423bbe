"""P2: the row-sharded Over-Encoding lookup (paper §3.3) at world sizes 2 and 4 on gloo CPU.

Prints per world size (1) bytes per token the OE lookup sends to other ranks (ids forward, vectors back, row
gradients backward; a rank's own segment is not counted) against the theoretical minimum (every UNIQUE remote
row of the batch moves its id once, its vector once and its gradient once) and against a lookup without
dedupe; (2) the training-step time (median) with the table replicated (gradient all-reduced, plain data
parallelism), row-sharded, and row-sharded with sparse table gradients + RowSparseAdam, interleaved step by
step; (3) the share of the sharded step spent in the OE lookup (forward lookup incl. its two collectives,
plus the backward all-to-all) and in its collectives alone.

    DS_ACCELERATOR=cpu python bench/oe_sharding.py [--worlds 2 4] [--m 200000] [--steps 7]
        [--json runs/bench/p2.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.ranks import spawn_ranks
from bench.timing import load_average, write_json

MODES = ("replicated", "sharded", "sharded+sparse")


def worker(rank: int, world: int, port: int, out, args) -> None:
    import torch
    import torch.distributed as dist

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

    from pipeline.parallel.table_optimizers import use_sparse_table_grads
    timers = {"comm": 0.0, "lookup_fwd": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[key] += time.perf_counter() - t0
        return wrapper

    models, opts = {}, {}
    for mode in MODES:
        torch.manual_seed(0)
        model = build_model(cfg)
        if mode != "replicated":
            model = parallelize(model, groups)
            model.over_encoding.lookup = timed(model.over_encoding.lookup, "lookup_fwd")
        if mode == "sharded+sparse":
            use_sparse_table_grads(model)
        tables = [p for p in model.parameters() if is_oe_table(p)]
        dense = [p for p in model.parameters() if not is_oe_table(p)]
        kind = "row_sparse_adam" if mode == "sharded+sparse" else "adamw"
        models[mode] = model
        opts[mode] = [torch.optim.AdamW(dense, lr=1e-3), build_table_optimizer(kind, tables, lr=1e-3)]

    times = {mode: [] for mode in MODES}
    shares = {"lookup": [], "comm": []}
    for step, ids in enumerate(batches):
        for mode in MODES:                          # interleaved: replicated, sharded, sparse, replicated, ...
            model = models[mode]
            dist.barrier()
            timers.update(comm=0.0, lookup_fwd=0.0)
            comm_fwd = 0.0
            t0 = time.perf_counter()
            if mode == "sharded" and step == 1:
                dist.all_to_all_single = counting
            if mode != "replicated":
                a2a, gather = dist.all_to_all_single, dist.all_gather_into_tensor
                dist.all_to_all_single, dist.all_gather_into_tensor = timed(a2a, "comm"), timed(gather, "comm")
            loss = model(ids).loss
            comm_fwd = timers["comm"]
            loss.backward()
            if mode != "replicated":
                dist.all_to_all_single, dist.all_gather_into_tensor = a2a, gather
            dist.all_to_all_single = original
            if mode != "replicated":
                sync_gradients(model, groups)
            else:                                   # plain data parallelism: every gradient all-reduced
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
            for o in opts[mode]:
                o.step()
                o.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            if step == 0:
                continue                            # warm-up
            times[mode].append(elapsed)
            if mode == "sharded":
                shares["lookup"].append((timers["lookup_fwd"] + timers["comm"] - comm_fwd) / elapsed)
                shares["comm"].append(timers["comm"] / elapsed)
    results = {mode: statistics.median(t) for mode, t in times.items()}
    results.update({f"share_{k}": statistics.median(v) for k, v in shares.items()})
    for mode in ("replicated", "sharded"):
        results[mode + "_table_params_per_rank"] = sum(p.numel() for p in models[mode].parameters() if is_oe_table(p))
    oe = models["sharded"].over_encoding
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


def run_world(world: int, args) -> dict:
    res = dict(enumerate(spawn_ranks(worker, world, (args,), timeout=3600)))
    r = dict(res[0])
    for key in ("measured", "minimum", "no_dedupe", *MODES, "share_lookup", "share_comm"):
        r[key] = statistics.mean(res[k][key] for k in res)        # every rank holds the same number of tokens
    return r


def main() -> None:
    # Before torch loads (it is imported inside the functions; the spawned ranks inherit the variable).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=200_000, help="base rows per OE table")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=7, help="timed steps per mode (plus one warm-up)")
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    record = {"bench": "P2_oe_sharding", "args": vars(args), "worlds": {}}
    for world in args.worlds:
        load0 = load_average()
        r = run_world(world, args)
        r["load"] = [load0, load_average()]
        record["worlds"][world] = r
        print(f"\n[world {world}] OE: {r['tables']} tables of width {r['dim']}, m={args.m}, {r['tokens']} tokens "
              f"per rank, 1 thread per rank, load avg {r['load'][0]:.1f} -> {r['load'][1]:.1f} (means over ranks)")
        print(f"  bytes/token to other ranks: measured {r['measured']:.1f}, theoretical minimum {r['minimum']:.1f}, "
              f"measured/minimum {r['measured'] / r['minimum']:.3f}; without dedupe {r['no_dedupe']:.1f}")
        print(f"  table params per rank: replicated {r['replicated_table_params_per_rank']:,}, "
              f"sharded {r['sharded_table_params_per_rank']:,}")
        print(f"  step median ms: replicated {r['replicated'] * 1e3:.1f}, sharded {r['sharded'] * 1e3:.1f} "
              f"({r['sharded'] / r['replicated']:.3f}x), sharded+sparse {r['sharded+sparse'] * 1e3:.1f} "
              f"({r['sharded+sparse'] / r['replicated']:.3f}x)")
        print(f"  sharded step share: OE lookup {r['share_lookup']:.3f}, its collectives {r['share_comm']:.3f}")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
