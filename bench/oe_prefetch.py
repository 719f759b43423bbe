"""How much of the sharded OE lookup parallel.oe_prefetch hides, at world 2 and 4 on gloo CPU.

    DS_ACCELERATOR=cpu python -m bench.oe_prefetch [--worlds 2 4] [--steps 12] [--accum 4] [--table-mib 256]

One trainer per world size (tiny-cpu model with a larger OE table, micro batch 1, `--accum` micro-batches
per step, oe_prefetch on); its steps alternate prefetch on / off (the prefetcher is detached for the "off"
steps), so both modes see the same load. Per mode, medians over the steps: the step time and the forward
lookup time per step (ShardedOverEncoding.lookup: with prefetch, the wait for the prefetched exchange plus
the gather; without, the whole exchange). hidden = 1 - lookup(on) / lookup(off). The first micro-batch of
each step is prefetched too, but only across the loader's work, so at most (accum-1)/accum of the lookup
can hide behind compute.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.ranks import spawn_ranks
from bench.startup_memory import table_m, write_shards
from bench.timing import load_average

CONFIG = "configs/run/tiny-cpu.yaml"


def _rank(rank: int, world: int, port: int, out, overrides: list[str], steps: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)

    from pipeline.config.run import load_run_config
    from pipeline.train.build import build_trainer
    trainer = build_trainer(load_run_config(CONFIG, overrides))
    oe = trainer.engine.module.over_encoding
    prefetcher = oe.prefetcher
    times: dict[str, list[float]] = {"on": [], "off": []}
    lookups: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(2 + 2 * steps):                      # 2 warm-up steps, then on/off alternating
        mode = "on" if i % 2 == 0 else "off"
        oe.prefetcher = prefetcher if mode == "on" else None
        dist.barrier()
        before, t0 = oe.lookup_s, time.perf_counter()
        trainer.train_step(collect=False)
        trainer.step += 1
        dist.barrier()
        if i >= 2:
            times[mode].append(time.perf_counter() - t0)
            lookups[mode].append(oe.lookup_s - before)
    oe.prefetcher = prefetcher
    out.put((rank, {"step": {m: statistics.median(v) for m, v in times.items()},
                    "lookup": {m: statistics.median(v) for m, v in lookups.items()}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=12, help="steps per mode")
    p.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step and rank")
    p.add_argument("--table-mib", type=float, default=256)
    args = p.parse_args()
    print(f"load average {load_average():.2f}")
    print(f"{'world':>5} {'step on ms':>11} {'step off ms':>12} {'lookup on ms':>13} {'lookup off ms':>14} "
          f"{'hidden':>7} {'step saved':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        shards = str(write_shards(Path(tmp) / "shards"))
        for world in args.worlds:
            overrides = [f"data.path={shards}", f"run_dir={tmp}/run{world}", "log.tensorboard=false",
                         f"model.over_encoding.m={table_m(args.table_mib * 2**20)}", "parallel.oe_prefetch=true",
                         "train.micro_batch_size=1", f"train.global_batch_size={world * args.accum}",
                         "eval.every=0", "eval.at_end=false", "checkpoint.every=0", "checkpoint.save_at_end=false",
                         f"train.max_steps={2 + 2 * args.steps}", "log.oe_health=false"]
            results = spawn_ranks(_rank, world, (overrides, args.steps), timeout=1800)
            step = {m: statistics.mean(r["step"][m] for r in results) for m in ("on", "off")}
            look = {m: statistics.mean(r["lookup"][m] for r in results) for m in ("on", "off")}
            print(f"{world:>5} {1e3 * step['on']:>11.1f} {1e3 * step['off']:>12.1f} {1e3 * look['on']:>13.1f} "
                  f"{1e3 * look['off']:>14.1f} {1 - look['on'] / look['off']:>7.1%} "
                  f"{1 - step['on'] / step['off']:>11.1%}", flush=True)
    print(f"load average {load_average():.2f}")


if __name__ == "__main__":
    main()
