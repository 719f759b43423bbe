"""Apply a parallel layout to a built OLMoE model by swapping modules (torchtitan-style); the model code
itself stays free of distribution.

    groups = init_process_groups(ParallelConfig(tp=1, ep=2), cfg)
    model = parallelize(build_model(cfg), groups)      # same parameter names, local shards only
    ... loss.backward(); sync_gradients(model, groups)   # when not training through DeepSpeed

Swaps: OverEncoding -> ShardedOverEncoding (table rows split over groups.oe_group, all-to-all lookup);
MoE -> ExpertParallelMoE when ep > 1; attention / dense MLP / embedding / head -> megatron-core
tensor-parallel layers when tp > 1. A materialised model's shards are copied from it. A model built on the
meta device (how the trainer builds) stays on meta through the swap, which creates only local-shard-shaped
meta parameters; `materialize_local` then allocates on the rank's device only what the rank holds and
initialises it to the values the same positions have in the single-process model (pipeline/model/init.py),
so no rank ever holds a full OE table or all experts, and both routes start identical to one process.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from pipeline.model.attention import Attention
from pipeline.model.init import Shard, materialize
from pipeline.model.mlp import SwiGLU
from pipeline.model.moe import MoE
from pipeline.model.over_encoding import OverEncoding
from pipeline.parallel.expert_parallel import ExpertParallelMoE
from pipeline.parallel.precision import matmul_dtype
from pipeline.parallel.process_groups import ParallelGroups
from pipeline.parallel.shard_info import mark_sharded, shard_info
from pipeline.parallel.oe_prefetch import LookupPrefetcher
from pipeline.parallel.sharded_embedding import RowSharding, sharded_lookup


class ShardedOverEncoding(OverEncoding):
    """OverEncoding whose stacked table holds only this rank's contiguous block of rows (paper §3.3)."""

    def __init__(self, dense: OverEncoding, group: dist.ProcessGroup,
                 prefetch_group: dist.ProcessGroup | None = None):
        with torch.device("meta"):   # build the module skeleton without allocating a full table
            super().__init__(dense.cfg, dense.proj.out_features, dense.vocab_size)
        self.proj, self.output_norm = dense.proj, dense.output_norm
        self.sparse_grad = dense.sparse_grad
        self.register_buffer("row_offsets", dense.row_offsets.clone(), persistent=False)
        self.group = group
        self.sharding = RowSharding(sum(self.table_rows), dist.get_world_size(group), dist.get_rank(group))
        start, end = self.sharding.bounds()
        self.table = nn.Parameter(dense.table.detach()[start:end].clone())
        self.table._oe_table = True
        mark_sharded(self.table, 0, start, end, self.sharding.global_rows)
        # parallel.oe_prefetch: the next micro-batch's lookup runs while this one computes (oe_prefetch.py)
        self.prefetcher = LookupPrefetcher(self, prefetch_group) if prefetch_group is not None else None
        self.lookup_s = 0.0

    def out_dtype(self) -> torch.dtype:
        return matmul_dtype(self.table)

    def global_rows(self, input_ids: torch.Tensor, doc_starts: torch.Tensor | None) -> torch.Tensor:
        """The stacked-table rows the forward of this micro-batch looks up, [B, S, T] (what `lookup` gets)."""
        return (self.table_ids(input_ids, doc_starts) + self.row_offsets.view(-1, 1, 1)).permute(1, 2, 0)

    def lookup(self, global_rows: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        fetched = self.prefetcher.take(global_rows) if self.prefetcher is not None else None
        out = self._lookup(global_rows, fetched)
        if self.training:
            self.lookup_s += time.perf_counter() - t0   # bench/oe_prefetch.py: forward lookup time per step
        return out

    def _lookup(self, global_rows: torch.Tensor, fetched) -> torch.Tensor:
        # every rank in the group holds a per-rank mean loss of its own (or a tp copy's) data; the owner
        # sums their row gradients, so scale by the group size to get the data-parallel mean
        return sharded_lookup(self.table, global_rows, self.sharding, self.group,
                              grad_scale=1.0 / self.sharding.world, sparse_grad=self.sparse_grad,
                              out_dtype=self.out_dtype(), touched=self.touched_rows if self.training else None,
                              fetched=fetched)


def _swap(model: nn.Module, kind: type, make) -> int:
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


def parallelize(model: nn.Module, groups: ParallelGroups) -> nn.Module:
    """Swap in the parallel modules for `groups.layout`, in place; returns the model."""
    if getattr(model, "over_encoding", None) is not None:
        model.over_encoding = ShardedOverEncoding(model.over_encoding, groups.oe_group, groups.oe_prefetch_group)
    if groups.ep > 1:
        _swap(model, MoE, lambda m: ExpertParallelMoE(m, groups.ep_group))
    if groups.tp > 1:
        from pipeline.parallel import tensor_parallel as tpl  # imports megatron-core's layers
        config = tpl.megatron_config(groups.tp, model.lm_head.weight.dtype)
        r = groups.tp_rank
        # megatron's layers allocate with torch.empty on the default device: keep a meta model on meta
        with torch.device("meta" if model.lm_head.weight.is_meta else torch.get_default_device()):
            _swap(model, Attention, lambda m: tpl.TensorParallelAttention(m, config, r, groups.tp_group))
            _swap(model, SwiGLU, lambda m: tpl.TensorParallelSwiGLU(m, config, r))
            model.embed = tpl.vocab_parallel_embedding(model.embed, config, r)
            model.lm_head = tpl.vocab_parallel_head(model.lm_head, config, r)
    return model


def local_shard(param: torch.Tensor) -> Shard | None:
    """The part of the full parameter a (possibly swapped-in) parameter holds, for the model's init."""
    info = shard_info(param)
    if info is None:
        return None
    shape = list(param.shape)
    shape[info.dim] = info.full_size
    return Shard(info.dim, info.start, tuple(shape))


@torch.no_grad()
def materialize_local(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Allocate a meta-built (and parallelized) model's parameters on `device`, each of its local shape, and
    initialise them from (seed, name, global position) in bounded blocks: this rank's OE rows, its experts,
    its TP slices, each equal to the same positions of the single-process model. Buffers are recomputed."""
    materialize(model, device)
    model.init_weights(shard_of=local_shard)
    return model


def is_oe_table(p: torch.Tensor) -> bool:
    return getattr(p, "_oe_table", False)


def is_expert(p: torch.Tensor) -> bool:
    return getattr(p, "_moe_expert", False)


@torch.no_grad()
def sync_gradients(model: nn.Module, groups: ParallelGroups) -> None:
    """Average gradients to the data-parallel mean, for loops that do not use DeepSpeed:
    - OE table shards: nothing to do (owners already hold the scaled sum from the all-to-all backward),
    - expert shards (ep > 1): each owner holds the sum over its EP group's tokens; sum over the ranks holding
      the same experts and divide by dp,
    - everything else: mean over the data-parallel group (tp peers hold identical replicated gradients)."""
    for p in model.parameters():
        if p.grad is None or is_oe_table(p):
            continue
        if groups.ep > 1 and is_expert(p):
            dist.all_reduce(p.grad, group=groups.edp_group)
        elif groups.dp > 1:
            dist.all_reduce(p.grad, group=groups.dp_group)
        else:
            continue
        p.grad.div_(groups.dp)
