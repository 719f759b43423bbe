"""Bytes each rank hands to the collectives of one optimizer step, by family, as the code issues them.

Notation (per rank): T = micro_batch x seq_len tokens per micro-batch, A = gradient-accumulation micro-batches
per optimizer step, D = d_model, K = k(n-1) OE tables of width d_t = D/K, R = stacked table rows, U = unique
table rows a micro-batch looks up (<= T K; the default T K is the upper bound, dedupe lowers it), E experts,
top-k, L = MoE layers (trunk + MTP blocks), N = the rank's engine (DeepSpeed) parameters (placement.py),
W_g = size of group g, a = activation bytes (2 under bf16 autocast, 4 in fp32), g_b / w_b = gradient / weight
bytes of the precision rule (memory.PRECISION_RULES: 4 / 4 for bf16 and fp32).

`payload` = bytes the rank passes in per step (all_to_all: its whole input incl. the part it keeps;
all_reduce: the tensor; all_gather: its input shard; reduce_scatter: its full input), exactly what
tests/pipeline/parallel/test_comm_bytes.py counts on gloo. `wire` = bytes leaving the rank under a ring /
uniform all-to-all: all_to_all (W-1)/W x payload (destinations uniform: hashed rows, balanced routing),
all_reduce 2(W-1)/W x payload, all_gather (W-1) x payload, reduce_scatter (W-1)/W x payload.

OE, sharded lookup (pipeline/parallel/sharded_embedding.py), group oe, A times per step:
  counts all_gather 8 W_oe | ids all_to_all U x (4 if R < 2^31 else 8) | vectors all_to_all U d_t a (owners cast
  to the compute dtype) | backward: row gradients all_to_all U d_t 4 (fp32, summed per unique row first).
EP (ep > 1, pipeline/parallel/expert_parallel.py), group ep, A L times per step:
  counts all_gather 8 E | forward: dispatch + combine all_to_all 2 T k D a | backward: the same 2 T k D a.
External (pipeline/train/external_params.py), at the boundary: expert gradients (ep > 1) all_reduce over edp,
  (expert params / ep) x 4; the external squared norm, one float64 all_reduce over the world.
ZeRO (DeepSpeed 0.19 stage_1_and_2.py / stage3.py, read and, for 1 and 2, measured), group dp:
  0: gradient all_reduce N g_b once per step (engine.allreduce_gradients at the boundary);
  1: the same all_reduce once per step (reduce_scatter=True still all-reduces each bucket under the default
     use_multi_rank_bucket_allreduce, every rank keeping its partition), then the updated partitions
     all_gather (N/dp) w_b, one call per parameter group;
  2: the all_reduce in EVERY micro-batch's backward (A N g_b), the same all_gather after the step;
  3: per micro-batch an all_gather of every non-persistent parameter forward and again backward (an upper
     bound: DeepSpeed's reuse distance can keep some) 2 (N_np/dp) w_b, a reduce_scatter of all gradients N g_b;
     after the step an all_gather of the persistent ones (numel <= stage3_param_persistence_threshold).
  Bucket sizes (reduce_bucket_size, allgather_bucket_size) split calls, never bytes; DeepSpeed's padding of
  each group to a multiple of 2 dp elements and its scalar all-reduces (norm, overflow) are not modelled.
TP (tp > 1, megatron-core layers, no sequence parallelism), group tp, A times per step:
  forward: embedding T D w_b, o_proj (and dense w_down) T D a per attention (MLP) layer, QK-norm sums 2 x T 4,
  cross entropy 3 x T 4 per head; backward: q, k, v (and dense gate, up) input gradients T D a each, QK-norm
  2 x T 4, the head's input gradient T D a per head.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.config.model import ModelConfig
from pipeline.model.flops import param_counts
from pipeline.model.memory import PRECISION_RULES, Layout

ENGINE_PARAM_GROUPS = 3      # the trainer's decay / no_decay / embedding groups: one ZeRO all_gather each
DEFAULT_BUCKET = 5e8         # DeepSpeed's reduce_bucket_size / allreduce_bucket_size default (elements)
DEFAULT_PERSISTENCE = 1e5    # stage3_param_persistence_threshold default (elements)


@dataclass(frozen=True)
class StepShape:
    micro_batch: int
    seq_len: int
    grad_accum: int

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Collective:
    family: str      # oe | ep | external | zero | tp
    name: str
    op: str          # torch.distributed name: all_to_all_single | all_reduce | all_gather_into_tensor | ...
    group: str       # tp | dp | ep | edp | oe | world (placement.group_ranks)
    phase: str       # forward | backward | step
    calls: int       # per optimizer step
    payload: float   # bytes per optimizer step, summed over the calls


WIRE = {"all_to_all_single": lambda w: (w - 1) / w, "all_reduce": lambda w: 2 * (w - 1) / w,
        "all_gather_into_tensor": lambda w: w - 1, "reduce_scatter_tensor": lambda w: (w - 1) / w}


def wire_bytes(c: Collective, group_size: int) -> float:
    return c.payload * WIRE[c.op](group_size)


def activation_bytes(precision: str) -> int:
    """Bytes of the tensors matmuls consume: bf16 under autocast (both bf16 rules), else fp32."""
    return 4 if precision == "fp32" else 2


def _term_bytes(precision: str, name: str) -> int:
    return next(t.nbytes for t in PRECISION_RULES[precision] if t.name == name)


def oe_collectives(cfg: ModelConfig, step: StepShape, oe_size: int, precision: str,
                   unique_rows: float | None = None) -> list[Collective]:
    oe = cfg.over_encoding
    if not oe.enabled:
        return []
    k, a = oe.num_tables, step.grad_accum
    width = cfg.d_model // k
    u = step.tokens * k if unique_rows is None else unique_rows
    id_bytes = 4 if sum(oe.moduli()) < 2**31 else 8
    act = activation_bytes(precision)
    return [Collective("oe", "counts", "all_gather_into_tensor", "oe", "forward", a, a * 8 * oe_size),
            Collective("oe", "ids", "all_to_all_single", "oe", "forward", a, a * u * id_bytes),
            Collective("oe", "vectors", "all_to_all_single", "oe", "forward", a, a * u * width * act),
            Collective("oe", "row gradients", "all_to_all_single", "oe", "backward", a, a * u * width * 4)]


def moe_layers(cfg: ModelConfig) -> int:
    od = cfg.over_decoding
    return (cfg.n_layers + (od.depth if od.mode == "mtp" else 0)) if cfg.is_moe else 0


def ep_collectives(cfg: ModelConfig, layout: Layout, step: StepShape, precision: str) -> list[Collective]:
    if layout.ep == 1:
        return []
    calls = step.grad_accum * moe_layers(cfg)
    rows = step.tokens * cfg.top_k * cfg.d_model * activation_bytes(precision)
    return [Collective("ep", "counts", "all_gather_into_tensor", "ep", "forward", calls, calls * 8 * cfg.n_experts),
            Collective("ep", "dispatch + combine", "all_to_all_single", "ep", "forward", 2 * calls, 2 * calls * rows),
            Collective("ep", "dispatch + combine gradients", "all_to_all_single", "ep", "backward", 2 * calls,
                       2 * calls * rows)]


def external_collectives(cfg: ModelConfig, layout: Layout, world: int) -> list[Collective]:
    out = []
    if layout.ep > 1:
        expert_grads = param_counts(cfg)["experts"] / layout.ep * 4
        out.append(Collective("external", "expert gradients", "all_reduce", "edp", "step", 3 * moe_layers(cfg),
                              expert_grads))
    if (cfg.over_encoding.enabled or layout.ep > 1) and world > 1:
        out.append(Collective("external", "squared norm", "all_reduce", "world", "step", 1, 8))
    return out


def zero_collectives(engine_numels: list[int], layout: Layout, step: StepShape, zero_stage: int, precision: str,
                     zero_config: dict | None = None) -> list[Collective]:
    z = zero_config or {}
    n = sum(engine_numels)
    g_b, w_b = _term_bytes(precision, "grads"), _term_bytes(precision, "weights")
    dp, a = layout.dp, step.grad_accum
    if zero_stage == 0:
        buckets = math.ceil(n / float(z.get("allreduce_bucket_size", DEFAULT_BUCKET)))
        return [Collective("zero", "gradient all-reduce", "all_reduce", "dp", "step", buckets, n * g_b)]
    buckets = math.ceil(n / float(z.get("reduce_bucket_size", DEFAULT_BUCKET)))
    if zero_stage in (1, 2):
        times = a if zero_stage == 2 else 1
        phase = "backward" if zero_stage == 2 else "step"
        return [Collective("zero", "gradient all-reduce", "all_reduce", "dp", phase, times * buckets, times * n * g_b),
                Collective("zero", "parameter all-gather", "all_gather_into_tensor", "dp", "step",
                           ENGINE_PARAM_GROUPS, n / dp * w_b)]
    threshold = float(z.get("stage3_param_persistence_threshold", DEFAULT_PERSISTENCE))
    gathered = [x for x in engine_numels if x > threshold]
    persistent = n - sum(gathered)
    return [Collective("zero", "parameter all-gather", "all_gather_into_tensor", "dp", "forward",
                       a * len(gathered), a * sum(gathered) / dp * w_b),
            Collective("zero", "parameter all-gather", "all_gather_into_tensor", "dp", "backward",
                       a * len(gathered), a * sum(gathered) / dp * w_b),
            Collective("zero", "gradient reduce-scatter", "reduce_scatter_tensor", "dp", "backward", a * buckets,
                       a * n * g_b),
            Collective("zero", "persistent parameter all-gather", "all_gather_into_tensor", "dp", "step", 1,
                       persistent / dp * w_b)]


def tp_collectives(cfg: ModelConfig, layout: Layout, step: StepShape, precision: str) -> list[Collective]:
    if layout.tp == 1:
        return []
    od = cfg.over_decoding
    depth = od.depth if od.mode == "mtp" else 0
    attn, heads = cfg.n_layers + depth, 1 + depth
    dense = 0 if cfg.is_moe else attn            # dense SwiGLU layers (trunk and MTP blocks)
    norms = 2 * attn if cfg.qk_norm else 0
    t, a, td = step.tokens, step.grad_accum, step.tokens * cfg.d_model
    act, w_b = activation_bytes(precision), _term_bytes(precision, "weights")
    fwd_calls = 1 + attn + dense + norms + 3 * heads
    fwd = td * w_b + (attn + dense) * td * act + norms * t * 4 + 3 * heads * t * 4
    bwd_calls = 3 * attn + 2 * dense + norms + heads
    bwd = (3 * attn + 2 * dense + heads) * td * act + norms * t * 4
    return [Collective("tp", "activations", "all_reduce", "tp", "forward", a * fwd_calls, a * fwd),
            Collective("tp", "activation gradients", "all_reduce", "tp", "backward", a * bwd_calls, a * bwd)]


def step_collectives(cfg: ModelConfig, layout: Layout, step: StepShape, engine_numels: list[int], *,
                     zero_stage: int, precision: str, oe_shard_group: str = "dp", zero_config: dict | None = None,
                     oe_unique_rows: float | None = None) -> list[Collective]:
    """Every modelled collective of one optimizer step on one rank (all ranks alike in expectation)."""
    world = layout.dp * layout.tp
    oe_size = layout.dp if oe_shard_group == "dp" else world
    return (oe_collectives(cfg, step, oe_size, precision, oe_unique_rows) + ep_collectives(cfg, layout, step, precision)
            + external_collectives(cfg, layout, world)
            + zero_collectives(engine_numels, layout, step, zero_stage, precision, zero_config)
            + tp_collectives(cfg, layout, step, precision))


def as_rows(collectives: list[Collective], group_sizes: dict[str, int]) -> list[dict]:
    return [{**asdict(c), "group_size": group_sizes[c.group], "wire": wire_bytes(c, group_sizes[c.group])}
            for c in collectives]
