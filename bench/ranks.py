"""Run a bench function on `world` local CPU ranks (spawned processes) and collect one result per rank."""
from __future__ import annotations

from typing import Callable


def spawn_ranks(target: Callable, world: int, args: tuple, timeout: float) -> list:
    """Call target(rank, world, port, out, *args) in `world` spawned processes; each puts (rank, result) on
    `out`. Returns the results in rank order. `port` is a free loopback port for the rendezvous."""
    import torch.multiprocessing as mp

    from pipeline.train.distributed import free_port
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, out, *args)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(world)]
