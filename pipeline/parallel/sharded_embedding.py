"""Row-sharded embedding lookup with one all-to-all pair forward and one all-to-all backward (paper §3.3).

One logical table (for Over-Encoding: all k(n-1) tables stacked, see OverEncoding.row_offsets) is split
into contiguous row blocks over a process group; rank r owns rows [r*ceil(R/W), ...). The table is never
all-gathered or all-reduced, so its memory, gradients and optimizer state scale as 1/W.

Forward (for the ids of every table at once):
  1. dedupe the requested rows (torch.unique: sorted, hence already bucketed by owner),
  2. exchange the per-owner counts (all_gather of W integers: split sizes for the next two calls),
  3. ONE all_to_all_single of the unique ids to their owners (unequal splits; int32 when R < 2^31),
  4. owners gather their local rows, ONE all_to_all_single of the vectors back, expand to every position.
Backward: sum the output gradient per unique row, ONE all_to_all_single of those row gradients to the owners,
which scatter-add them into the (shard-sized) gradient of their local rows.

Why our own collective instead of a library: torch's sharded embeddings (DTensor/TorchRec) either gather
whole rows per table or need CUDA-only kernels; this is the paper's method in ~100 lines on any backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.parallel.shard_info import even_bounds


@dataclass(frozen=True)
class RowSharding:
    """Contiguous row blocks of a `global_rows`-row table over `world` ranks of a group."""
    global_rows: int
    world: int
    rank: int

    @property
    def rows_per_rank(self) -> int:
        return -(-self.global_rows // self.world)

    def bounds(self, rank: int | None = None) -> tuple[int, int]:
        return even_bounds(self.global_rows, self.world, self.rank if rank is None else rank)

    @property
    def local_rows(self) -> int:
        start, end = self.bounds()
        return end - start


@dataclass
class Fetched:
    """The forward exchange of one lookup: the unique rows' vectors and what the backward needs."""
    vecs: torch.Tensor         # [n_unique, dim] in out_dtype
    inverse: torch.Tensor      # position -> unique row
    local_rows: torch.Tensor   # rows of this shard that other ranks (and this one) asked for
    send_splits: list[int]
    recv_splits: list[int]


def exchange(shard: torch.Tensor, ids: torch.Tensor, sharding: RowSharding, group: dist.ProcessGroup,
             out_dtype: torch.dtype, touched: torch.Tensor | None) -> Fetched:
    """Steps 1-4 of the module docstring for `ids` (collective over `group`). Reads the shard, never writes it:
    the lookup of a later micro-batch of the same optimizer step may run it early (oe_prefetch.py)."""
    world = sharding.world
    uniq, inverse = torch.unique(ids.reshape(-1), sorted=True, return_inverse=True)
    owner = torch.div(uniq, sharding.rows_per_rank, rounding_mode="floor")
    send_counts = torch.bincount(owner, minlength=world)
    # split sizes: every rank needs the column of counts addressed to it (W*W integers in total)
    all_counts = torch.empty(world * world, dtype=send_counts.dtype, device=send_counts.device)
    dist.all_gather_into_tensor(all_counts, send_counts, group=group)
    recv_counts = all_counts.view(world, world)[:, sharding.rank]
    send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()

    id_dtype = torch.int32 if sharding.global_rows < 2**31 else torch.int64
    recv_ids = torch.empty(sum(recv_splits), dtype=id_dtype, device=ids.device)
    dist.all_to_all_single(recv_ids, uniq.to(id_dtype), recv_splits, send_splits, group=group)
    local_rows = recv_ids.long() - sharding.bounds()[0]
    if touched is not None:     # usage monitoring: the owner sees every rank's requests for its rows
        touched[local_rows] = True

    rows = shard.detach()[local_rows].to(out_dtype)    # owners cast: the vectors travel in compute dtype
    vecs = torch.empty(uniq.numel(), shard.shape[1], dtype=out_dtype, device=shard.device)
    dist.all_to_all_single(vecs, rows, send_splits, recv_splits, group=group)
    return Fetched(vecs, inverse, local_rows, send_splits, recv_splits)


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shard: torch.Tensor, ids: torch.Tensor, sharding: RowSharding,
                group: dist.ProcessGroup, grad_scale: float, sparse_grad: bool,
                out_dtype: torch.dtype, touched: torch.Tensor | None, fetched: Fetched | None) -> torch.Tensor:
        if fetched is None:
            fetched = exchange(shard, ids, sharding, group, out_dtype, touched)
        ctx.save_for_backward(fetched.inverse, fetched.local_rows)
        ctx.meta = (fetched.send_splits, fetched.recv_splits, fetched.vecs.shape[0], shard.shape, shard.dtype, group,
                    grad_scale, sparse_grad)
        return fetched.vecs[fetched.inverse].view(*ids.shape, shard.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        inverse, local_rows = ctx.saved_tensors
        send_splits, recv_splits, n_unique, shard_shape, grad_dtype, group, grad_scale, sparse_grad = ctx.meta
        dim = shard_shape[1]
        # Row gradients are summed and travel in the table's (master) dtype, fp32: a bf16 sum over the
        # positions and ranks that hit one row would round away the small per-position contributions.
        grad_unique = torch.zeros(n_unique, dim, dtype=grad_dtype, device=grad_out.device)
        grad_unique.index_add_(0, inverse, grad_out.reshape(-1, dim).to(grad_dtype))
        grad_rows = torch.empty(len(local_rows), dim, dtype=grad_dtype, device=grad_out.device)
        dist.all_to_all_single(grad_rows, grad_unique, recv_splits, send_splits, group=group)
        if grad_scale != 1.0:
            grad_rows.mul_(grad_scale)
        if sparse_grad:     # only the received rows (duplicates from several ranks are summed on coalesce);
            # local_rows lie in [0, shard rows) by construction, so the O(nnz) invariant check is skipped
            return (torch.sparse_coo_tensor(local_rows.unsqueeze(0), grad_rows, shard_shape, check_invariants=False),
                    None, None, None, None, None, None, None, None)
        grad_shard = torch.zeros(shard_shape, dtype=grad_dtype, device=grad_out.device)
        grad_shard.index_add_(0, local_rows, grad_rows)
        return grad_shard, None, None, None, None, None, None, None, None


def sharded_lookup(shard: torch.Tensor, ids: torch.Tensor, sharding: RowSharding, group: dist.ProcessGroup,
                   grad_scale: float = 1.0, sparse_grad: bool = False,
                   out_dtype: torch.dtype | None = None, touched: torch.Tensor | None = None,
                   fetched: Fetched | None = None) -> torch.Tensor:
    """Rows `ids` (global row numbers, any shape) of the table whose local block is `shard` ->
    [*ids.shape, dim]. Collective: every rank of `group` must call it, in the same order.

    grad_scale multiplies the gradient the owner accumulates. The owner receives the SUM of every rank's
    row gradients; with per-rank mean losses averaged over data-parallel replicas, pass 1 / (ranks in the
    group), which equals 1/dp when each replica appears equally often in the group. sparse_grad returns the
    shard's gradient as a sparse COO tensor over the received rows (see OverEncoding.sparse_grad).
    out_dtype (default: the shard's) is the dtype the vectors are returned in: under bf16 autocast the owners
    cast their rows to bf16 before the return all-to-all (half the bytes; the projection that consumes them
    would round them to bf16 anyway), while the row gradients are summed and sent in the shard's dtype.
    `touched` (bool, one per row of `shard`), when given, gets True at every local row some rank asked for.
    `fetched`: the forward exchange of exactly these ids, done earlier (oe_prefetch.py); the backward always
    runs on `group`."""
    if ids.dtype != torch.long:
        raise TypeError(f"sharded_lookup: ids must be int64, got {ids.dtype}")
    return _ShardedLookup.apply(shard, ids, sharding, group, grad_scale, sparse_grad,
                                shard.dtype if out_dtype is None else out_dtype, touched, fetched)
