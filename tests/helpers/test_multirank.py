"""The multi-rank launcher itself: results come back in rank order, failures and hangs are bounded."""
import time

import pytest
import torch
import torch.distributed as dist

from tests.helpers.multirank import run_ranks


def sum_ranks(rank, world_size, scale):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item() * scale}


def fail_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom from rank 1")
    dist.barrier()  # rank 0 would hang here forever without the launcher's kill


def test_collective_results():
    res = run_ranks(2, "tests.helpers.test_multirank:sum_ranks", {"scale": 2}, timeout=60)
    assert res == [{"rank": 0, "sum": 2.0}, {"rank": 1, "sum": 2.0}]


def test_failure_is_reported_not_hung():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="boom from rank 1"):
        run_ranks(2, "tests.helpers.test_multirank:fail_on_one", timeout=60)
    assert time.monotonic() - t0 < 60
