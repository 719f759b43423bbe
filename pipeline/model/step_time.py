"""Predicted time of one optimizer step on a stated cluster: compute from the model's FLOPs and an MFU
assumption, communication from comm_model.py's bytes with an alpha-beta model; plus the per-rank placement
(placement.py). What `launch/inspect_model.py --layout/--run-config` prints under "communication".

Cluster (defaults: H100 SXM nodes): gpu_flops 989e12 (bf16 dense) x mfu 0.4 (an assumption: the share of peak
the matmuls reach, attention and expert GEMMs included); intra_bw 450 GB/s (NVLink 4, per GPU and direction),
inter_bw 50 GB/s (one 400 Gb/s InfiniBand NIC per GPU), 8 GPUs per node, latency alpha_intra 5 us and
alpha_inter 10 us per ring step / all-to-all peer.

Time of one collective over a group of W ranks of which W_node share this rank's node (rank // gpus_per_node):
- ring all_reduce / all_gather / reduce_scatter: wire / B + calls x steps x alpha, with B = inter_bw when the
  group spans nodes (the ring crosses the network at per-GPU NIC bandwidth, NCCL's bus bandwidth), else
  intra_bw; steps = 2(W-1) for all_reduce, W-1 otherwise;
- all_to_all: max(payload (W_node-1)/W / intra_bw, payload (W-W_node)/W / inter_bw) + calls x (W-1) x alpha
  (uniform destinations; NVLink and the NIC run concurrently).
Step = compute + (1 - overlap) x sum of the collective times; overlap 0 (the default) = nothing hidden, an upper
bound (ZeRO-2's bucketed all-reduce does overlap the backward with overlap_comm; the OE and EP exchanges sit
on the critical path unless parallel.oe_prefetch hides the forward one). Not modelled: pipeline bubbles (there
is no pipeline parallelism), stragglers, routing imbalance, host overheads, TP's replicated MoE compute.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig
from pipeline.model.comm_model import StepShape, as_rows, step_collectives, wire_bytes
from pipeline.model.flops import training_flops_per_token
from pipeline.model.memory import Layout
from pipeline.model.placement import group_ranks, local_parameters, rank_placement


@dataclass(frozen=True)
class Cluster:
    gpu_flops: float = 989e12
    mfu: float = 0.4
    intra_bw: float = 450e9
    inter_bw: float = 50e9
    gpus_per_node: int = 8
    alpha_intra: float = 5e-6
    alpha_inter: float = 1e-5
    overlap: float = 0.0

    @classmethod
    def parse(cls, specs: list[str]) -> "Cluster":
        """'inter_bw=25e9,mfu=0.35' (or a list of such) -> Cluster; bad input is a one-line ConfigError."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for spec in specs:
            for item in filter(None, spec.split(",")):
                key, _, raw = item.partition("=")
                key = key.strip()
                if key not in known:
                    raise ConfigError(f"--cluster: unknown key {key!r} (allowed: {', '.join(known)})")
                try:
                    value = float(raw)
                except ValueError:
                    raise ConfigError(f"--cluster {key}: expected a number, got {raw!r}") from None
                values[key] = int(value) if key == "gpus_per_node" else value
        cluster = cls(**values)
        cluster.check()
        return cluster

    def check(self) -> None:
        for f in fields(self):
            if f.name != "overlap" and not getattr(self, f.name) > 0:
                raise ConfigError(f"--cluster {f.name}: must be > 0 (got {getattr(self, f.name)})")
        if not 0 <= self.overlap <= 1:
            raise ConfigError(f"--cluster overlap: must be in [0, 1] (got {self.overlap})")


def collective_seconds(op: str, calls: int, payload: float, wire: float, ranks: list[int], rank: int,
                       cluster: Cluster) -> float:
    n = len(ranks)
    if n == 1 or calls == 0:
        return 0.0
    g = cluster.gpus_per_node
    local = sum(1 for r in ranks if r // g == rank // g)
    spans = local < n
    alpha = cluster.alpha_inter if spans else cluster.alpha_intra
    if op == "all_to_all_single":
        intra, inter = payload * (local - 1) / n, payload * (n - local) / n
        return max(intra / cluster.intra_bw, inter / cluster.inter_bw) + calls * (n - 1) * alpha
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    return wire / (cluster.inter_bw if spans else cluster.intra_bw) + calls * steps * alpha


def scale_report(cfg: ModelConfig, layout: Layout, step: StepShape, model, *, zero_stage: int, precision: str,
                 oe_shard_group: str = "dp", zero_config: dict | None = None, cluster: Cluster | None = None,
                 ranks: tuple[int, ...] = (0,), oe_unique_rows: float | None = None) -> dict:
    """Placement of `ranks`, the step's collectives on rank ranks[0] (bytes and time) and the predicted step
    time. `model`: the full model on the meta device."""
    cluster = cluster or Cluster()
    world = layout.dp * layout.tp
    for r in ranks:
        if not 0 <= r < world:
            raise ConfigError(f"--ranks: {r} is not a rank of world {world}")
    rank = ranks[0]
    local = local_parameters(model, layout, rank, oe_shard_group)
    engine = [p.shape for p in local.values() if p.where == "engine"]
    numels = [math.prod(s) for s in engine]
    collectives = step_collectives(cfg, layout, step, numels, zero_stage=zero_stage, precision=precision,
                                   oe_shard_group=oe_shard_group, zero_config=zero_config,
                                   oe_unique_rows=oe_unique_rows)
    groups = group_ranks(layout, rank, oe_shard_group)
    rows = as_rows(collectives, {k: len(v) for k, v in groups.items()})
    for row, c in zip(rows, collectives):
        row["seconds"] = collective_seconds(c.op, c.calls, c.payload, wire_bytes(c, len(groups[c.group])),
                                            groups[c.group], rank, cluster)
    families: dict[str, dict[str, float]] = {}
    for row in rows:
        f = families.setdefault(row["family"], {"payload": 0.0, "wire": 0.0, "seconds": 0.0})
        for key in f:
            f[key] += row[key]
    tokens = step.tokens * step.grad_accum                    # per data-parallel rank and optimizer step
    compute = training_flops_per_token(cfg, step.seq_len) * tokens / layout.tp / (cluster.gpu_flops * cluster.mfu)
    comm = sum(f["seconds"] for f in families.values())
    total = compute + (1 - cluster.overlap) * comm
    return {
        "cluster": asdict(cluster),
        "step": {**asdict(step), "tokens_per_step": tokens * layout.dp},
        "rank": rank,
        "collectives": rows,
        "families": families,
        "step_time": {"compute_s": compute, "comm_s": comm, "total_s": total,
                      "tokens_per_s": tokens * layout.dp / total,
                      "tokens_per_s_per_gpu": tokens * layout.dp / total / world,
                      "comm_share": (1 - cluster.overlap) * comm / total},
        "placement": {str(r): rank_placement(model, layout, r, oe_shard_group, cluster.gpus_per_node) for r in ranks},
    }

