"""Analytic per-rank memory of parameters, gradients and optimizer state under a parallel layout and precision.

Pure arithmetic on the config (the model itself stays free of parallelism); activations are not included.
Placement follows the trainer (pipeline/train/parallel_run.py): dense weights replicated over DP and split
over TP; OE tables row-sharded over the DP ranks (paper §3.3, or over every rank with oe_shard_group
"world"); experts inside DeepSpeed when ep = 1, and with ep > 1 split over EP (EP ranks carved out of DP, so
each expert shard is replicated over dp/ep ranks). OE tables and expert shards with ep > 1 are stepped
OUTSIDE DeepSpeed, so ZeRO never partitions them.

Bytes per parameter come from PRECISION_RULES: one Term per tensor a parameter costs, with the ZeRO stages at
which it exists and at which DeepSpeed partitions it over the data-parallel replicas, and whether it is held
between optimizer steps ("held") or only from the forward/backward to the step ("transient"; the peak adds
it). The rules are read off DeepSpeed 0.19 (runtime/zero/stage_1_and_2.py, stage3.py, bf16_optimizer.py)
and checked against the tensors a trainer run really holds (bench/gpu_check_memory.py; on CPU at world 1
and 2, ZeRO 0-3):
- ZeRO-1/2 keep a flat fp32 clone of their partition (`single_partition_of_fp32_groups`) even when the
  module weights are fp32 already; so does ZeRO-3 (its `fp32_partitioned_groups_flat` was measured to be a
  separate storage although stage3.py means to share it under autocast).
- ZeRO-0/1 gradients are full-size and freed after the step; ZeRO-2 reduces them bucket by bucket into a
  partition freed after the step; ZeRO-3 keeps a persistent fp32 gradient partition
  (`grad_partitions_flat_buffer`) and, with contiguous_gradients (its default), one reduce bucket of
  reduce_bucket_size elements (default 5e8: 2 GB in fp32) whatever the model size (`deepspeed_buffer_bytes`).
- "bf16" is what the trainer uses (deepspeed.precision: bf16 = DeepSpeed's torch_autocast, see
  pipeline/train/deepspeed_config.py): every weight, gradient and optimizer state stays fp32; matmuls run in
  bf16, and the bf16 copy autocast makes of each weight is saved for the backward (transient, 2 B; ZeRO-3
  does not partition it: autograd holds the whole copy after the fp32 layer is released again).
- "bf16-master-weights" is DeepSpeed's bf16.enabled optimizer with fp32 gradient accumulation
  (bf16 module weights + fp32 master + Adam + fp32 accumulation buffer), listed for comparison only.
Parameters outside DeepSpeed (EXTERNAL_RULE) are fp32 storage cast to bf16 at use in every precision:
weight 4 B + AdamW m, v 8 B (RowSparseAdam keeps dense moments too) + a dense fp32 gradient 4 B; with
table_optimizer row_sparse_adam the table gradient is sparse (only the rows the step looked up, bounded by
`tokens_per_rank_step` x tables x (4 B x width + 8 B row index)).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig
from pipeline.model.flops import param_counts
from pipeline.model.init import BLOCK

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
INIT_BLOCK_BYTES = BLOCK * 4      # the start-up init's largest temporary: one block of fp32 values
ALL_STAGES = frozenset({0, 1, 2, 3})


@dataclass
class Layout:
    dp: int = 1
    tp: int = 1
    ep: int = 1

    @classmethod
    def parse(cls, specs: list[str]) -> "Layout":
        """'dp=32,tp=2' or ['dp=32', 'ep=8'] -> Layout; bad input raises a one-line ConfigError."""
        values: dict[str, int] = {}
        for spec in specs:
            for item in filter(None, spec.split(",")):
                key, _, raw = item.partition("=")
                key = key.strip()
                if key not in ("dp", "tp", "ep"):
                    raise ConfigError(f"layout: unknown axis {key!r} in {item!r} (allowed: dp, tp, ep)")
                if not raw.strip().isdigit() or int(raw) < 1:
                    raise ConfigError(f"layout.{key}: expected a positive integer, got {raw!r}")
                values[key] = int(raw)
        return cls(**values)

    def check(self, cfg: ModelConfig) -> None:
        if self.dp % self.ep:
            raise ConfigError(f"layout.ep: {self.ep} must divide dp={self.dp} (EP ranks come from DP)")
        if cfg.is_moe and cfg.n_experts % self.ep:
            raise ConfigError(f"layout.ep: {self.ep} must divide n_experts={cfg.n_experts}")
        if cfg.n_heads % self.tp:
            raise ConfigError(f"layout.tp: {self.tp} must divide n_heads={cfg.n_heads}")


@dataclass(frozen=True)
class Term:
    name: str                         # weights | master | optimizer | grads | grad_accum | bf16_copies
    nbytes: int                       # bytes per parameter before partitioning
    exists: frozenset = ALL_STAGES    # ZeRO stages at which DeepSpeed holds this tensor
    partitioned: frozenset = frozenset()   # ZeRO stages that split it over the data-parallel replicas
    transient: bool = False           # only from the forward/backward to the optimizer step


_ENGINE_FP32 = (Term("weights", 4, partitioned=frozenset({3})),
                Term("master", 4, exists=frozenset({1, 2, 3}), partitioned=frozenset({1, 2, 3})),
                Term("optimizer", 8, partitioned=frozenset({1, 2, 3})),
                Term("grads", 4, exists=frozenset({0, 1, 2}), partitioned=frozenset({2}), transient=True),
                Term("grads", 4, exists=frozenset({3}), partitioned=frozenset({3})))
PRECISION_RULES: dict[str, tuple[Term, ...]] = {
    "fp32": _ENGINE_FP32,
    "bf16": _ENGINE_FP32 + (Term("bf16_copies", 2, transient=True),),
    "bf16-master-weights": (Term("weights", 2, partitioned=frozenset({3})),
                            Term("master", 4, partitioned=frozenset({1, 2, 3})),
                            Term("optimizer", 8, partitioned=frozenset({1, 2, 3})),
                            Term("grad_accum", 4, partitioned=frozenset({2, 3})),
                            Term("grads", 2, partitioned=frozenset({2, 3}), transient=True)),
}
EXTERNAL_RULE = (Term("weights", 4), Term("optimizer", 8), Term("grads", 4, transient=True))
TERM_NAMES = ("weights", "master", "optimizer", "grad_accum", "grads", "bf16_copies")


def check_precision(precision: str, zero_stage: int) -> None:
    if precision not in PRECISION_RULES:
        raise ConfigError(f"precision: {precision!r} is not one of {sorted(PRECISION_RULES)}")
    if zero_stage not in ALL_STAGES:
        raise ConfigError(f"zero_stage: {zero_stage} is not 0, 1, 2 or 3")


def bytes_per_parameter(kind: str, precision: str, zero_stage: int, replicas: int,
                        held_only: bool = False) -> dict[str, float]:
    """Bytes this rank holds per parameter it owns a copy of, by term. kind: "engine" (inside DeepSpeed,
    ZeRO-partitioned over `replicas`), "experts" / "oe_table" (outside DeepSpeed: never partitioned).
    held_only: only the terms held between optimizer steps."""
    check_precision(precision, zero_stage)
    out = dict.fromkeys(TERM_NAMES, 0.0)
    if kind == "engine":
        for t in PRECISION_RULES[precision]:
            if zero_stage in t.exists and not (held_only and t.transient):
                out[t.name] += t.nbytes / (replicas if zero_stage in t.partitioned else 1)
        return out
    for t in EXTERNAL_RULE:
        if not (held_only and t.transient):
            out[t.name] += t.nbytes
    if kind == "experts" and precision != "fp32" and not held_only:
        out["bf16_copies"] = 2.0       # the grouped GEMM's bf16 cast of the local experts, saved for backward
    return out


def deepspeed_buffer_bytes(zero_stage: int, zero_config: dict | None = None, precision: str = "bf16") -> int:
    """Fixed-size buffers DeepSpeed holds whatever the model size: ZeRO-3's reduce bucket (contiguous_gradients,
    its default) of reduce_bucket_size elements in the module weights' dtype. ZeRO-0/1/2 hold none between
    steps (measured). `zero_config`: the DeepSpeed JSON's zero_optimization section."""
    z = zero_config or {}
    if zero_stage != 3 or not z.get("contiguous_gradients", True):
        return 0
    weight_bytes = next(t.nbytes for t in PRECISION_RULES[precision] if t.name == "weights")
    return int(float(z.get("reduce_bucket_size", 5e8))) * weight_bytes


def memory_breakdown(cfg: ModelConfig, layout: Layout, precision: str = "bf16", zero_stage: int = 1,
                     table_optimizer: str = "adamw", oe_shard_group: str = "dp",
                     tokens_per_rank_step: int | None = None) -> dict[str, dict]:
    """Per parameter kind on one rank: parameters held, bytes per parameter by term, held / peak bytes.
    `tokens_per_rank_step` (global batch x seq_len / dp) bounds the sparse table gradient of
    row_sparse_adam; without it that gradient is left out (reported as None)."""
    check_precision(precision, zero_stage)
    layout.check(cfg)
    c = param_counts(cfg)
    experts, tables = c["experts"], c["oe_tables"]
    dense = c["total"] - experts - tables
    kinds: dict[str, tuple[float, str, int]] = {"dense": (dense / layout.tp, "engine", layout.dp)}
    if experts:
        kinds["experts"] = ((experts / layout.ep, "experts", 1) if layout.ep > 1
                            else (experts, "engine", layout.dp))
    if tables:
        owners = layout.dp * (layout.tp if oe_shard_group == "world" else 1)
        kinds["oe_tables"] = (tables / owners, "oe_table", 1)
    out: dict[str, dict] = {}
    for name, (n_local, kind, replicas) in kinds.items():
        per = bytes_per_parameter(kind, precision, zero_stage, replicas)
        sparse = None
        if kind == "oe_table" and table_optimizer == "row_sparse_adam":
            per["grads"] = 0.0
            if tokens_per_rank_step is not None:
                oe = cfg.over_encoding
                width = cfg.d_model // oe.num_tables
                rows = min(n_local / width, tokens_per_rank_step * oe.num_tables)
                sparse = rows * (4 * width + 8)
        held = sum(bytes_per_parameter(kind, precision, zero_stage, replicas, held_only=True).values()) * n_local
        peak = sum(per.values()) * n_local + (sparse or 0.0)
        out[name] = {"params": n_local, "placement": "deepspeed" if kind == "engine" else "outside deepspeed",
                     "replicas_partitioned_over": replicas if kind == "engine" else 1,
                     "bytes_per_param": per, "sparse_grad_bytes": sparse, "held_bytes": held,
                     "peak_bytes": peak}
    return out


def startup_peak_bytes(parts: dict[str, dict], precision: str, zero_stage: int, held: float) -> float:
    """Peak of the start-up (build_trainer), an upper bound. Each rank materialises only what it holds
    (pipeline/parallel/parallelize.py materialize_local: its OE rows, experts, TP slices), initialised one
    block at a time, so before deepspeed.initialize it holds the weights of its own parameters, the engine's
    whole (also at ZeRO-3: deepspeed.zero.Init is not used, the table and ep > 1 experts never enter the
    engine). initialize then briefly holds the engine's weights twice at ZeRO-1/2 (it flattens them into one
    buffer) before the partitioned state of `held` is built. Peak = max(that, held) + one init block."""
    weight = next(t.nbytes for t in PRECISION_RULES[precision] if t.name == "weights")
    engine = weight * sum(p["params"] for p in parts.values() if p["placement"] == "deepspeed")
    external = sum(p["bytes_per_param"]["weights"] * p["params"] for p in parts.values()
                   if p["placement"] != "deepspeed")
    before_partition = external + engine * (2 if zero_stage in (1, 2) else 1)
    return max(held, before_partition) + INIT_BLOCK_BYTES


def per_rank_bytes(cfg: ModelConfig, layout: Layout, param_dtype: str = "bf16", zero_stage: int = 1,
                   table_optimizer: str = "adamw", oe_shard_group: str = "dp",
                   tokens_per_rank_step: int | None = None, buffer_bytes: int = 0) -> dict[str, int]:
    """Flat per-rank totals: each term summed over the parameter kinds; `held` (between steps), `total`
    (the training peak without activations = held + transient), `startup_peak` (startup_peak_bytes) and the
    local OE table weights.
    `buffer_bytes` (deepspeed_buffer_bytes) is added to both as `deepspeed_buffers`."""
    parts = memory_breakdown(cfg, layout, param_dtype, zero_stage, table_optimizer, oe_shard_group,
                             tokens_per_rank_step)
    out = {name: 0.0 for name in TERM_NAMES}
    for part in parts.values():
        for name, b in part["bytes_per_param"].items():
            out[name] += b * part["params"]
        out["grads"] += part["sparse_grad_bytes"] or 0.0
    out["params"] = out.pop("weights")
    tables = parts.get("oe_tables")
    out["oe_tables_params"] = tables["bytes_per_param"]["weights"] * tables["params"] if tables else 0.0
    out["deepspeed_buffers"] = float(buffer_bytes)
    out["held"] = sum(p["held_bytes"] for p in parts.values()) + buffer_bytes
    out["total"] = sum(p["peak_bytes"] for p in parts.values()) + buffer_bytes
    out["startup_peak"] = startup_peak_bytes(parts, param_dtype, zero_stage, out["held"])
    return {key: int(round(value)) for key, value in out.items()}
