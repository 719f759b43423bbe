"""Process groups for a parallel layout, built with megatron-core's parallel_state.

megatron-core orders ranks tp-cp-ep-dp-pp: tensor-parallel peers are adjacent ranks, data-parallel
replicas are strided by tp, and the expert-parallel group is carved out of the data-parallel ranks
(expert_tensor_parallel_size = 1), with the expert-data-parallel group joining the ranks that hold the same
experts. Its vocab-parallel cross entropy reads the tensor-parallel group from parallel_state, so the
groups must come from there. The OE table group is ours (paper §3.3): the data-parallel ranks by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.config.base import ConfigError, validate_tree
from pipeline.config.model import ModelConfig
from pipeline.config.parallel import ParallelConfig


@dataclass
class ParallelGroups:
    layout: ParallelConfig
    world: int
    rank: int
    tp: int
    dp: int
    ep: int
    tp_rank: int
    dp_rank: int
    ep_rank: int
    tp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup          # dense-parameter gradient averaging; data sharding
    ep_group: dist.ProcessGroup          # token dispatch to experts
    edp_group: dist.ProcessGroup         # ranks holding the same experts (expert gradient averaging)
    oe_group: dist.ProcessGroup          # OE table rows are split over these ranks
    oe_prefetch_group: dist.ProcessGroup | None = None   # same ranks as oe_group; parallel.oe_prefetch only

    @property
    def oe_size(self) -> int:
        return dist.get_world_size(self.oe_group)

    @property
    def oe_rank(self) -> int:
        return dist.get_rank(self.oe_group)


def check_layout(layout: ParallelConfig, world: int, cfg: ModelConfig | None = None) -> None:
    """One-line errors naming the key for layouts that cannot tile this world or this model."""
    validate_tree(layout, "parallel")
    if world % layout.tp:
        raise ConfigError(f"parallel.tp: {layout.tp} does not divide the world size {world}")
    dp = world // layout.tp
    if dp % layout.ep:
        raise ConfigError(f"parallel.ep: {layout.ep} does not divide the data-parallel size {dp}")
    if cfg is None:
        return
    if layout.ep > 1:
        if not cfg.is_moe:
            raise ConfigError(f"parallel.ep: {layout.ep} > 1 needs an MoE model (mlp: moe)")
        if cfg.n_experts % layout.ep:
            raise ConfigError(f"parallel.ep: {layout.ep} does not divide n_experts {cfg.n_experts}")
    if layout.tp > 1:
        for key, value in (("n_heads", cfg.n_heads), ("d_model", cfg.d_model),
                           ("padded_vocab_size", cfg.padded_vocab_size)):
            if value % layout.tp:
                raise ConfigError(f"parallel.tp: {layout.tp} does not divide {key} {value}")
        if not cfg.is_moe and cfg.dense_hidden % layout.tp:
            raise ConfigError(f"parallel.tp: {layout.tp} does not divide dense_hidden {cfg.dense_hidden}")
        if cfg.over_decoding.mode == "product":
            raise ConfigError("parallel.tp: product-form Over-Decoding heads are not tensor-parallel; "
                              "use over_decoding.mode mtp or tp 1")


def _world_timeout_s() -> float | None:
    """The timeout the default group was created with (run config deepspeed.timeout_s), if readable."""
    try:
        device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
        return dist.group.WORLD._get_backend(device).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return None


def init_process_groups(layout: ParallelConfig, cfg: ModelConfig | None = None,
                        timeout_s: float | None = None) -> ParallelGroups:
    """Call once after torch.distributed is initialised; every rank must call it (collective).
    `timeout_s` (default: the default group's) bounds every collective on the new groups, so a rank that
    dies or hangs ends its peers with an error instead of megatron-core's 30-minute default wait."""
    from megatron.core import parallel_state as ps  # heavy import (~6 s): only when parallelism is used

    world, rank = dist.get_world_size(), dist.get_rank()
    check_layout(layout, world, cfg)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    timeout_s = timeout_s or _world_timeout_s()
    # megatron-core builds timedelta(minutes=...) from this: a fraction of a minute works as well.
    timeout_kw = {"distributed_timeout_minutes": timeout_s / 60} if timeout_s else {}
    ps.initialize_model_parallel(tensor_model_parallel_size=layout.tp, expert_model_parallel_size=layout.ep,
                                 expert_tensor_parallel_size=1, create_gloo_process_groups=False, **timeout_kw)
    dp_group = ps.get_data_parallel_group()
    oe_group = dp_group if layout.oe_shard_group == "dp" else dist.group.WORLD
    return ParallelGroups(oe_prefetch_group=_twin_group(oe_group) if layout.oe_prefetch else None,
        layout=layout, world=world, rank=rank, tp=layout.tp, dp=world // layout.tp, ep=layout.ep,
        tp_rank=ps.get_tensor_model_parallel_rank(), dp_rank=ps.get_data_parallel_rank(),
        ep_rank=ps.get_expert_model_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group(), dp_group=dp_group,
        ep_group=ps.get_expert_model_parallel_group(), edp_group=ps.get_expert_data_parallel_group(),
        oe_group=oe_group)


def _twin_group(group: dist.ProcessGroup) -> dist.ProcessGroup:
    """A second group with the ranks of `group` (every rank's twin is created, in one order, by every rank:
    new_group is collective over the whole world even for groups a rank is not in)."""
    mine = dist.get_process_group_ranks(group)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    twin, _ = dist.new_subgroups_by_enumeration(sorted({tuple(r) for r in everyone}))
    return twin


def destroy_process_groups() -> None:
    from megatron.core import parallel_state as ps
    ps.destroy_model_parallel()
