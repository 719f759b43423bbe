"""Overlap the sharded OE lookup of the next micro-batch with the current one's compute (parallel.oe_prefetch).

The forward exchange of a sharded lookup (sharded_embedding.exchange: counts, ids out, rows back) depends only
on the micro-batch's token ids and on the table, and the table changes only at the optimizer step. So within
one optimizer step the lookup of micro-batch m+1 can run while micro-batch m computes, and its vectors are
exactly those the synchronous lookup would return. The trainer hands the step's micro-batches to `plan`;
the lookup of micro-batch m takes its prefetched exchange and starts m+1's.

The exchange runs on a worker thread over a process group of its own (the same ranks as the OE group):
collectives of one group must be issued in the same order on every rank, and the main thread keeps issuing
its own (expert all-to-alls, the OE backward, ZeRO reductions) meanwhile. Every rank prefetches the same
sequence of micro-batches, so the prefetch group's order is the same everywhere. On CUDA the exchange runs
on a side stream and the consumer waits for it with an event.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.distributed as dist

from pipeline.parallel.sharded_embedding import Fetched, exchange


class LookupPrefetcher:
    def __init__(self, module, group: dist.ProcessGroup):
        self.module = module   # the ShardedOverEncoding whose lookups are prefetched
        self.group = group     # the OE group's twin (process_groups._twin_group)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oe-prefetch")
        self.queue: list[torch.Tensor] = []          # global rows of the step's later micro-batches
        self.pending: tuple[torch.Tensor, Future] | None = None
        self.stream = None
        self.wait_s = 0.0      # time the consumer waited for a prefetched exchange (the part not hidden)
        self.prefetched = 0    # lookups served from a prefetch

    def plan(self, micro_batches: list[dict]) -> None:
        """The step's micro-batches (numpy batches, in the order they will be run): start the first lookup."""
        self.drain()
        self.queue = [self.module.global_rows(torch.from_numpy(b["input_ids"]),
                                              torch.from_numpy(b["doc_starts"])) for b in micro_batches]
        self._start_next()

    def _start_next(self) -> None:
        if self.queue and self.pending is None:
            rows = self.queue.pop(0).to(self.module.table.device)
            self.pending = (rows, self.pool.submit(self._exchange, rows, self.module.training))

    def _exchange(self, rows: torch.Tensor, training: bool):
        m = self.module
        touched = m.touched_rows if training else None
        if m.table.is_cuda:
            if self.stream is None:
                self.stream = torch.cuda.Stream(device=m.table.device)
            with torch.cuda.stream(self.stream):
                fetched = exchange(m.table, rows, m.sharding, self.group, m.out_dtype(), touched)
                event = torch.cuda.Event()
                event.record(self.stream)
            return fetched, event
        return exchange(m.table, rows, m.sharding, self.group, m.out_dtype(), touched), None

    def take(self, rows: torch.Tensor) -> Fetched | None:
        """The prefetched exchange of `rows` if one is pending (then the next is started); None when nothing was
        planned (validation, generation: the caller looks up synchronously, as every rank then does)."""
        if self.pending is None:
            return None
        if not torch.equal(self.pending[0], rows):
            # Falling back here would issue a collective the other ranks do not: a wrong plan is a bug.
            raise RuntimeError("parallel.oe_prefetch: the looked-up ids are not the planned micro-batch's")
        t0 = time.perf_counter()
        fetched, event = self.pending[1].result()
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
        self.wait_s += time.perf_counter() - t0
        self.prefetched += 1
        self.pending = None
        self._start_next()
        return fetched

    def drain(self) -> None:
        """Finish (and drop) a prefetch nobody took, so the prefetch group's collectives stay paired."""
        if self.pending is not None:
            self.pending[1].result()
            self.pending = None
        self.queue = []

    def close(self) -> None:
        self.drain()
        self.pool.shutdown(wait=True)
