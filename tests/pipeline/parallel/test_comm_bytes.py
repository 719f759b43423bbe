"""The inspector's byte model (pipeline/model/comm_model.py) against the collectives a real training step issues.

The tiny run config (configs/run/tiny-cpu.yaml: OLMoE + OE + MTP) trains through the trainer on 2 and 4 gloo
ranks with every torch.distributed collective counted (tests/helpers/collective_counter.py), step 2 of 2
with 2 micro-batches per step (so ZeRO-2's per-micro-batch reduction differs from ZeRO-1's per-step one):
- 2 ranks: sharded OE + EP2 with ZeRO-0, ZeRO-1 (fp32) and ZeRO-2 (bf16 autocast: half-size vectors and
  tokens, fp32 row gradients and ZeRO traffic);
- 4 ranks: sharded OE + EP2 (expert-data-parallel groups of 2) with ZeRO-2, and TP2 x DP2 with ZeRO-1.
Per family the calls and bytes equal the model's: exactly per rank where a rank's payload is its own data (OE
ids, row gradients and counts, EP counts, expert gradients, ZeRO and TP reductions), summed over the ranks
where it is what other ranks asked for (OE vectors, EP combine; equal on average). The OE rows each
micro-batch looks up (after dedupe) are counted at the lookup's input, independently of the collectives, and
handed to the model; the model's default (no dedupe) is checked to bound them. ZeRO's parameter all-gather may
exceed the model by DeepSpeed's padding (< 2 x dp elements per parameter group). Not modelled, and excluded:
DeepSpeed's scalar all-reduces (<= 8 B: norm, overflow) and the trainer's own (bad-step agreement, metrics).
"""
from __future__ import annotations

import math

import pytest

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards

QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "log.oe_health=false", "train.max_steps=2",
         "checkpoint.every=0", "checkpoint.save_at_end=false", "checkpoint.keep_last=0", "train.micro_batch_size=1"]
EP2 = ["parallel.ep=2"]
# global batch = 2 x dp: 2 micro-batches of 1 sequence per optimizer step
CASES = {2: {"ep2-zero0-fp32": [*EP2, "deepspeed.zero_stage=0", "train.global_batch_size=4"],
             "ep2-zero1-fp32": [*EP2, "deepspeed.zero_stage=1", "train.global_batch_size=4"],
             "ep2-zero2-bf16": [*EP2, "deepspeed.zero_stage=2", "deepspeed.precision=bf16",
                                "train.global_batch_size=4"]},
         4: {"ep2-zero2-fp32": [*EP2, "deepspeed.zero_stage=2", "train.global_batch_size=8"],
             "tp2-zero1-fp32": ["parallel.tp=2", "deepspeed.zero_stage=1", "train.global_batch_size=4"]}}
MEASURED_STEP = 2


def count_worker(rank: int, world: int, shards: str, root: str, cases: dict) -> dict:
    from tests.helpers.collective_counter import CollectiveCounter
    # before build_trainer: DeepSpeed's comm backend keeps references to the functions it wraps
    counter = CollectiveCounter().install()
    from pipeline.parallel.parallelize import ShardedOverEncoding
    from pipeline.train.build import build_trainer
    from pipeline.train.trainer import Trainer
    from tests.pipeline.train.runs import tiny_config

    unique: list[tuple[object, int]] = []
    train_step, lookup = Trainer.train_step, ShardedOverEncoding.lookup

    def tagged_step(self, collect):
        counter.tag = self.step
        try:
            return train_step(self, collect)
        finally:
            counter.tag = None

    def counted_lookup(self, global_rows):
        unique.append((counter.tag, int(global_rows.unique().numel())))
        return lookup(self, global_rows)

    Trainer.train_step, ShardedOverEncoding.lookup = tagged_step, counted_lookup
    out = {}
    try:
        for name, overrides in cases.items():
            counter.calls.clear()
            unique.clear()
            cfg = tiny_config(shards, f"{root}/{name}", *QUIET, *overrides)
            trainer = build_trainer(cfg)
            trainer.fit()
            totals = counter.totals({MEASURED_STEP})
            out[name] = {"totals": {"|".join(k): v for k, v in totals.items()},
                         "zero_scalars": [c.payload for c in counter.calls
                                          if c.tag == MEASURED_STEP and c.source == "zero" and c.payload <= 8],
                         "unique_rows": [u for tag, u in unique if tag == MEASURED_STEP],
                         "engine_params": sum(p.numel() for p in trainer.engine.module.parameters())}
    finally:
        counter.uninstall()
        Trainer.train_step, ShardedOverEncoding.lookup = train_step, lookup
    return out


def modelled(name: str, world: int, unique_rows: float | None) -> tuple[dict, int, int]:
    """(model totals per family|op|phase, engine params, parameter all-gather padding bound in bytes)."""
    from launch.inspect_model import load_inspected_run
    from pipeline.model import build_model
    from pipeline.model.comm_model import StepShape, step_collectives
    from pipeline.model.memory import Layout
    from pipeline.model.placement import local_parameters
    from pipeline.train.deepspeed_config import gradient_accumulation_steps

    cfg = load_inspected_run("configs/run/tiny-cpu.yaml", [*QUIET, *CASES[world][name]])
    par = cfg.parallel
    layout = Layout(dp=world // par.tp, tp=par.tp, ep=par.ep)
    local = local_parameters(build_model(cfg.model, device="meta", seed=0), layout, 0, par.oe_shard_group)
    numels = [math.prod(p.shape) for p in local.values() if p.where == "engine"]
    step = StepShape(cfg.train.micro_batch_size, cfg.data.seq_len, gradient_accumulation_steps(cfg, layout.dp))
    assert step.grad_accum == 2, step
    collectives = step_collectives(cfg.model, layout, step, numels, zero_stage=cfg.deepspeed.zero_stage,
                                   precision=cfg.deepspeed.precision, oe_shard_group=par.oe_shard_group,
                                   oe_unique_rows=unique_rows)
    out: dict[str, dict] = {}
    for c in collectives:
        # ZeRO-2's bucket flushes after the backward for a model this small, and the boundary work sits
        # outside autograd: compare zero / external without the phase
        phase = "*" if c.family in ("zero", "external") else ("backward" if c.phase == "backward" else "forward")
        t = out.setdefault(f"{c.family}|{c.op}|{phase}", {"calls": 0, "payload": 0.0})
        t["calls"] += c.calls
        t["payload"] += c.payload
    return out, sum(numels), 3 * 2 * layout.dp * 4


def measured_key(key: str) -> str:
    family, op, phase = key.split("|")
    return f"{family}|{op}|{'*' if family in ('zero', 'external') else phase}"


# keys whose payload is the rank's own data (the others: what other ranks asked of it, equal in sum)
PER_RANK_EXACT = {"oe|all_gather_into_tensor|forward", "oe|all_to_all_single|backward",
                  "ep|all_gather_into_tensor|forward", "external|all_reduce|*", "zero|all_reduce|*",
                  "zero|reduce_scatter_tensor|*", "tp|all_reduce|forward", "tp|all_reduce|backward"}


def check_case(name: str, world: int, ranks: list[dict]) -> dict:
    per_rank = []
    for r in ranks:
        got: dict[str, dict] = {}
        for key, v in r["totals"].items():
            if key.startswith("pipeline_other|"):   # the trainer's bad-step agreement and metrics
                continue
            t = got.setdefault(measured_key(key), {"calls": 0, "payload": 0})
            t["calls"] += v["calls"]
            t["payload"] += v["payload"]
        scalars = r["zero_scalars"]
        if scalars:   # DeepSpeed's norm / overflow scalars: not modelled
            t = got["zero|all_reduce|*"]
            t["calls"] -= len(scalars)
            t["payload"] -= sum(scalars)
        u = r["unique_rows"]
        model, engine, padding = modelled(name, world, sum(u) / len(u) if u else None)
        bound, _, _ = modelled(name, world, None)
        assert r["engine_params"] == engine, (name, r["engine_params"], engine)
        assert set(got) == set(model), (name, sorted(got), sorted(model))
        for key in model:
            assert got[key]["calls"] == model[key]["calls"], (name, key, got[key], model[key])
        if u:   # dedupe only lowers the model's default (every looked-up row distinct)
            for key in ("oe|all_to_all_single|forward", "oe|all_to_all_single|backward"):
                assert model[key]["payload"] <= bound[key]["payload"], (name, key)
        per_rank.append((got, model, padding))
    rows = {}
    for key in per_rank[0][1]:
        measured = [g[key]["payload"] for g, _, _ in per_rank]
        model = [m[key]["payload"] for _, m, _ in per_rank]
        if key in PER_RANK_EXACT:
            assert measured == pytest.approx(model, abs=0.5), (name, key, measured, model)
        elif key == "zero|all_gather_into_tensor|*":
            padding = per_rank[0][2]
            assert all(0 <= m - p < padding for m, p in zip(measured, model)), (name, key, measured, model)
        else:   # what a rank sends back is what the others asked of it: equal in sum
            assert sum(measured) == pytest.approx(sum(model), abs=0.5), (name, key, measured, model)
        rows[key] = {"measured": sum(measured), "modelled": sum(model)}
    return rows


@pytest.mark.parametrize("world", [2, 4])
def test_modelled_bytes_equal_the_collectives_of_a_training_step(world, tmp_path):
    shards = make_shards(tmp_path / "shards")
    results = run_ranks(world, "tests.pipeline.parallel.test_comm_bytes:count_worker",
                        {"shards": str(shards), "root": str(tmp_path), "cases": CASES[world]}, timeout=900)
    for name in CASES[world]:
        rows = check_case(name, world, [r[name] for r in results])
        print(f"world {world} {name}: " + "; ".join(f"{k} {v['measured']:,.0f} = {v['modelled']:,.0f}"
                                                   for k, v in rows.items()))
