"""Where every parameter of a model lives under a dp/tp/ep layout, rank by rank: the rank's coordinates and
process groups, its OE table rows, its experts, and the local shape of each parameter.

Pure arithmetic on the config and the meta-device model (the model stays free of parallelism): this is the
PREDICTION of what the trainer builds. The trainer's real parallelize step (pipeline/train/parallel_run.py,
pipeline/parallel/) is checked against it rank by rank by the dry run (pipeline/train/dry_run.py), at any
world size in one process, so the two are written independently on purpose. The rules:
- ranks are ordered as megatron-core orders them (tp-cp-ep-dp-pp, cp = pp = 1, expert tp = 1): tp peers are
  adjacent ranks, dp replicas are strided by tp; the expert layout is ep-dp over the whole world (ep peers
  adjacent, the expert-data-parallel group strided by ep); tp > 1 with ep > 1 is refused by the config;
- the OE table group is the dp group (default) or the world; rows are split into contiguous blocks of
  ceil(R / W) rows (the last blocks may be shorter);
- experts (ep > 1): rank with ep index j holds experts [j E/ep, (j+1) E/ep) of every MoE layer;
- tp > 1: attention q/k/v and dense SwiGLU gate/up split their output dim, o_proj and w_down their input dim,
  QK-norm weights their only dim, the embedding and the head their (padded) vocabulary rows, all into tp
  equal contiguous slices; routers, experts, norms, OE projections and MTP projections stay whole;
- OE table shards and (ep > 1) expert shards are stepped outside DeepSpeed ("external"), the rest is the
  engine's (ZeRO-partitioned over dp).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from pipeline.model.attention import Attention
from pipeline.model.memory import Layout
from pipeline.model.mlp import SwiGLU

# module type -> {parameter (relative name): dimension split over tp}
_TP_SPLITS = {Attention: {"q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0, "o_proj.weight": 1,
                          "q_norm.weight": 0, "k_norm.weight": 0},
              SwiGLU: {"w_gate.weight": 0, "w_up.weight": 0, "w_down.weight": 1}}
_TP_TOP = {"embed.weight": 0, "lm_head.weight": 0}


@dataclass(frozen=True)
class ParamPlacement:
    shape: tuple[int, ...]            # the rank's local shape
    shard: tuple[int, int, int, int] | None   # (dim, start, end, full size) of the full parameter, None: whole
    where: str                        # "engine" (DeepSpeed) | "external" (stepped by us)


def block_bounds(size: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous blocks of ceil(size / parts): part `index` holds [start, end) (possibly empty)."""
    per = -(-size // parts)
    start = min(index * per, size)
    return start, min(start + per, size)


def coordinates(layout: Layout, rank: int) -> dict[str, int]:
    tp, ep = layout.tp, layout.ep
    return {"rank": rank, "tp_rank": rank % tp, "dp_rank": rank // tp, "ep_rank": rank % ep,
            "edp_rank": rank // ep}


def group_ranks(layout: Layout, rank: int, oe_shard_group: str = "dp") -> dict[str, list[int]]:
    """The global ranks of each process group `rank` belongs to (tp, dp, ep, edp, oe, world)."""
    world, tp, ep = layout.dp * layout.tp, layout.tp, layout.ep
    tp_first = rank - rank % tp
    ep_first = rank - rank % ep
    dp = list(range(rank % tp, world, tp))
    return {"tp": list(range(tp_first, tp_first + tp)), "dp": dp,
            "ep": list(range(ep_first, ep_first + ep)), "edp": list(range(rank % ep, world, ep)),
            "oe": dp if oe_shard_group == "dp" else list(range(world)), "world": list(range(world))}


def _tp_split_dims(model: nn.Module) -> dict[str, int]:
    dims = dict(_TP_TOP)
    for prefix, module in model.named_modules():
        for kind, splits in _TP_SPLITS.items():
            if type(module) is kind:
                # QK-norm weights exist only with qk_norm
                dims.update({f"{prefix}.{rel}": dim for rel, dim in splits.items() if _has(module, rel)})
    return dims


def _has(module: nn.Module, rel: str) -> bool:
    try:
        module.get_parameter(rel)
        return True
    except AttributeError:
        return False


def local_parameters(model: nn.Module, layout: Layout, rank: int,
                     oe_shard_group: str = "dp") -> dict[str, ParamPlacement]:
    """Every parameter of the full (meta) `model` as `rank` holds it: local shape, slice, engine or external."""
    c = coordinates(layout, rank)
    groups = group_ranks(layout, rank, oe_shard_group)
    oe_size, oe_rank = len(groups["oe"]), groups["oe"].index(rank)
    tp_dims = _tp_split_dims(model) if layout.tp > 1 else {}
    out: dict[str, ParamPlacement] = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if getattr(p, "_oe_table", False):
            start, end = block_bounds(shape[0], oe_size, oe_rank)
            out[name] = ParamPlacement((end - start, *shape[1:]), (0, start, end, shape[0]), "external")
        elif getattr(p, "_moe_expert", False) and layout.ep > 1:
            per = shape[0] // layout.ep
            first = c["ep_rank"] * per
            out[name] = ParamPlacement((per, *shape[1:]), (0, first, first + per, shape[0]), "external")
        elif name in tp_dims:
            dim = tp_dims[name]
            size = shape[dim] // layout.tp
            local = list(shape)
            local[dim] = size
            start = c["tp_rank"] * size
            out[name] = ParamPlacement(tuple(local), (dim, start, start + size, shape[dim]), "engine")
        else:
            out[name] = ParamPlacement(shape, None, "engine")
    return out


def rank_placement(model: nn.Module, layout: Layout, rank: int, oe_shard_group: str = "dp",
                   gpus_per_node: int | None = None) -> dict:
    """JSON-able summary of `rank`: coordinates, groups, OE rows, experts, parameter counts, local shapes."""
    params = local_parameters(model, layout, rank, oe_shard_group)
    coords = coordinates(layout, rank)
    coords["node_rank"] = rank // gpus_per_node if gpus_per_node else 0
    oe = next(((p.shard[1], p.shard[2], p.shard[3]) for n, p in params.items()
               if n == "over_encoding.table"), None)
    experts = next(((p.shard[1], p.shard[2], p.shard[3]) for p in params.values()
                    if p.where == "external" and p.shard and len(p.shape) == 3), None)
    engine = sum(math.prod(p.shape) for p in params.values() if p.where == "engine")
    external = sum(math.prod(p.shape) for p in params.values() if p.where == "external")
    return {"coords": coords, "groups": group_ranks(layout, rank, oe_shard_group),
            "oe_rows": list(oe) if oe else None, "experts": list(experts) if experts else None,
            "engine_params": engine, "external_params": external,
            "params": {n: {"shape": list(p.shape), "shard": list(p.shard) if p.shard else None, "where": p.where}
                       for n, p in params.items()}}
