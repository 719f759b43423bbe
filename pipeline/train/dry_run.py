"""Dry run of the trainer's parallel layout at full world size, in one process: for each chosen rank, the real
code the trainer runs to build groups and shard the model (ParallelRun: megatron-core's parallel_state groups
and ours; prepare_model: parallelize's module swaps, materialisation, the OE / expert shards taken out of the
engine) runs under torch.distributed's fake process group on meta tensors, and what it built is compared
with what the inspector predicts (pipeline/model/placement.py): every parameter's local shape, slice of the
full tensor and placement (DeepSpeed engine or stepped outside it), the OE table row range, the experts held,
and the ranks of every process group.

    report = dry_run(cfg, world=256, ranks=[0, 1, 255])     # report["mismatches"] == {} when they agree

The fake backend (torch.testing._internal.distributed.fake_pg) accepts every collective without moving data,
so group creation (every rank creates every group, as megatron-core does) and the swaps run as on a cluster;
meta tensors allocate nothing, so a 13B-parameter OE table costs nothing. About 0.3-0.6 s per rank after the
megatron-core import (group creation dominates): all 256 ranks of OLMoE-1.3B + OE-12.8M at ep 8 took 152 s
on 2 shared CPU cores.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from pipeline.config.run import RunConfig
from pipeline.model import build_model
from pipeline.model.memory import Layout
from pipeline.model.placement import rank_placement
from pipeline.parallel.shard_info import shard_info
from pipeline.train.distributed import DistInfo
from pipeline.train.parallel_run import ParallelRun

# What the dry run does not build, and why (reported with every result).
SKIPPED = (
    "deepspeed.initialize: it flattens the engine's parameters into real fp32 buffers, broadcasts them from "
    "rank 0 and partitions them over dp; meta tensors have no data to flatten, so ZeRO's partitions are not "
    "built (their sizes are the inspector's N/dp, DeepSpeed pads each parameter group to a multiple of 2 x dp)",
    "the data loaders, the optimizer step and any forward/backward: the fake process group returns no data, so "
    "routing and lookups cannot run; their collectives are checked on gloo instead "
    "(tests/pipeline/parallel/test_comm_bytes.py)",
)
GROUPS = ("tp", "dp", "ep", "edp", "oe")


def _shard(p: torch.Tensor) -> list[int] | None:
    info = shard_info(p)
    return None if info is None else [info.dim, info.start, info.end, info.full_size]


def built_rank(cfg: RunConfig, world: int, rank: int) -> dict:
    """What ParallelRun.prepare_model builds on `rank` of `world`: parameters (local shape, slice, engine or
    external) and process-group ranks. Needs a process where torch.distributed is not initialised."""
    from torch.testing._internal.distributed.fake_pg import FakeStore   # registers the "fake" backend

    if dist.is_initialized():
        raise RuntimeError("dry run: torch.distributed is already initialised in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    par = None
    try:
        par = ParallelRun(cfg, DistInfo(rank, world, rank, torch.device("meta"), "fake"))
        model = par.prepare_model(build_model(cfg.model, device="meta", seed=cfg.train.seed))
        params = {name: {"shape": list(p.shape), "shard": _shard(p), "where": "engine"}
                  for name, p in model.named_parameters()}
        for ext in par.external.params if par.external is not None else []:
            params[ext.name] = {"shape": list(ext.param.shape), "shard": _shard(ext.param), "where": "external"}
        groups = {}
        if par.groups is not None:
            groups = {g: dist.get_process_group_ranks(getattr(par.groups, f"{g}_group")) for g in GROUPS}
        return {"params": params, "groups": groups}
    finally:
        if par is not None and par.groups is not None:
            from pipeline.parallel.process_groups import destroy_process_groups
            destroy_process_groups()
        dist.destroy_process_group()


def compare(built: dict, predicted: dict) -> list[str]:
    """One line per disagreement between the built rank and the inspector's placement of it."""
    out = []
    real, expect = built["params"], predicted["params"]
    for name in sorted(set(real) | set(expect)):
        if name not in real or name not in expect:
            out.append(f"{name}: {'built but not predicted' if name in real else 'predicted but not built'}")
            continue
        for key in ("shape", "shard", "where"):
            if real[name][key] != expect[name][key]:
                out.append(f"{name}: {key} built {real[name][key]}, predicted {expect[name][key]}")
    for g, ranks in built["groups"].items():
        if ranks != predicted["groups"][g]:
            out.append(f"group {g}: built {ranks[:8]}{'...' if len(ranks) > 8 else ''}, predicted "
                       f"{predicted['groups'][g][:8]}{'...' if len(predicted['groups'][g]) > 8 else ''}")
    return out


def dry_run(cfg: RunConfig, world: int, ranks: list[int] | None = None) -> dict:
    """Build `ranks` (default: every rank) of `world` and compare each with the inspector's placement."""
    par = cfg.parallel
    layout = Layout(dp=world // par.tp, tp=par.tp, ep=par.ep)
    full = build_model(cfg.model, device="meta", seed=cfg.train.seed)
    ranks = list(range(world)) if ranks is None else ranks
    t0 = time.perf_counter()
    mismatches: dict[str, list[str]] = {}
    summary = {}
    for rank in ranks:
        predicted = rank_placement(full, layout, rank, par.oe_shard_group)
        built = built_rank(cfg, world, rank)
        problems = compare(built, predicted)
        if problems:
            mismatches[str(rank)] = problems
        summary[str(rank)] = {"oe_rows": predicted["oe_rows"], "experts": predicted["experts"],
                              "engine_params": predicted["engine_params"],
                              "external_params": predicted["external_params"],
                              "groups_built": sorted(built["groups"])}
    return {"world": world, "layout": {"dp": layout.dp, "tp": layout.tp, "ep": layout.ep,
                                       "oe_shard_group": par.oe_shard_group},
            "ranks_checked": len(ranks), "ranks": summary, "mismatches": mismatches, "skipped": list(SKIPPED),
            "seconds": time.perf_counter() - t0}
