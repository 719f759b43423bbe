"""Rank functions for the multi-rank parallelism tests (run through tests/helpers/multirank.py).

The reference is one process training the same model (same seed) on the same global batch: each step it
back-propagates the mean of the data-parallel shards' losses (what data parallelism computes by definition;
the MoE load-balancing loss is a product of per-batch means, so it is per shard in both).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pipeline.config.model import load_model_config
from pipeline.config.parallel import ParallelConfig
from pipeline.model import build_model
from pipeline.parallel.parallelize import is_oe_table, parallelize, sync_gradients
from pipeline.parallel.process_groups import init_process_groups
from pipeline.parallel.shard_info import local_slice
from pipeline.parallel.table_optimizers import build_table_optimizer

LR = 1e-3
# Adam's update moves by at most lr * |dg| / eps when a gradient changes by dg; megatron-core's
# vocab-parallel cross entropy computes in fp32 even for fp64 logits, so a larger eps than the usual 1e-8
# keeps that fp32 rounding from dominating the fp64 parameter comparison of the tp layouts.
EPS = 1e-6


def model_config(name: str, overrides: list[str]):
    return load_model_config(f"configs/model/{name}.yaml", overrides)


def make_batches(cfg, steps: int, batch: int, seq: int, seed: int = 1234):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (steps, batch, seq), generator=g)
    doc_starts = torch.rand(steps, batch, seq, generator=g) < 0.08
    doc_starts[:, :, 0] = True
    return ids, doc_starts


def optimizers(model, table_opt: str):
    dense = [p for p in model.parameters() if not is_oe_table(p)]
    tables = [p for p in model.parameters() if is_oe_table(p)]
    opts = [torch.optim.AdamW(dense, lr=LR, betas=(0.9, 0.95), eps=EPS, weight_decay=0.1)]
    if tables:
        opts.append(build_table_optimizer(table_opt, tables, lr=LR, eps=EPS, weight_decay=0.0))
    return opts


def train_reference(model, ids, doc_starts, dp: int, table_opt: str, steps: int | None = None) -> list[float]:
    opts, losses = optimizers(model, table_opt), []
    for step in range(ids.shape[0] if steps is None else steps):
        for o in opts:
            o.zero_grad(set_to_none=True)
        total = 0.0
        for x, d in zip(ids[step].chunk(dp), doc_starts[step].chunk(dp)):
            out = model(x, doc_starts=d)
            (out.loss / dp).backward()
            total += out.loss.item() / dp
        if steps is not None and step == steps - 1:
            return losses + [total]                 # stop before the update: gradients stay
        for o in opts:
            o.step()
        losses.append(total)
    return losses


def train_parallel(model, groups, ids, doc_starts, table_opt: str, steps: int | None = None) -> list[float]:
    opts, losses = optimizers(model, table_opt), []
    for step in range(ids.shape[0] if steps is None else steps):
        for o in opts:
            o.zero_grad(set_to_none=True)
        x = ids[step].chunk(groups.dp)[groups.dp_rank]
        d = doc_starts[step].chunk(groups.dp)[groups.dp_rank]
        out = model(x, doc_starts=d)
        out.loss.backward()
        sync_gradients(model, groups)
        if steps is not None and step == steps - 1:
            return losses + [out.loss.item()]
        for o in opts:
            o.step()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss, group=groups.dp_group)
        losses.append(loss.item() / groups.dp)
    return losses


def rel_errors(parallel_model, reference_model, grads: bool = False) -> dict[str, float]:
    """Per tensor ||shard - reference slice|| / ||reference slice|| (parameters, or their gradients)."""
    ref = dict(reference_model.named_parameters())
    errors = {}
    for name, p in parallel_model.named_parameters():
        got = p.grad if grads else p
        want = local_slice((ref[name].grad if grads else ref[name]).detach(), p)
        assert want.shape == p.shape, (name, want.shape, p.shape)
        if want.numel() and want.norm() > 0:
            errors[name] = ((got.detach() - want).norm() / want.norm()).item()
    return errors


def seeded_model(cfg, dtype: torch.dtype):
    """The same initial model on every call (copy.deepcopy would drop the _oe_table/_moe_expert marks)."""
    torch.manual_seed(0)
    return build_model(cfg).to(dtype)


def _compare(cfg, groups, ids, doc_starts, table_opt: str, dtype: torch.dtype, grad_check: bool) -> dict:
    result = {}
    if grad_check:   # gradients of the first step, before any update
        ref1, par1 = seeded_model(cfg, dtype), parallelize(seeded_model(cfg, dtype), groups)
        train_reference(ref1, ids, doc_starts, groups.dp, table_opt, steps=1)
        train_parallel(par1, groups, ids, doc_starts, table_opt, steps=1)
        result["grad_errors"] = rel_errors(par1, ref1, grads=True)
    reference, initial = seeded_model(cfg, dtype), seeded_model(cfg, dtype)
    par = parallelize(seeded_model(cfg, dtype), groups)
    ref_losses = train_reference(reference, ids, doc_starts, groups.dp, table_opt)
    par_losses = train_parallel(par, groups, ids, doc_starts, table_opt)
    result["loss_errors"] = [abs(a - b) / abs(b) for a, b in zip(par_losses, ref_losses)]
    result["param_errors"] = rel_errors(par, reference)
    # training must have moved every parameter that receives gradients, or the comparison proves nothing
    result["moved"] = min(rel_errors(par, initial).values())
    local = {n: tuple(p.shape) for n, p in par.named_parameters()}
    full = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    result["sharded"] = sorted(n for n in local if local[n] != full[n])
    return result


def equivalence(rank: int, world: int, model: str, overrides: list[str], layout: dict, steps: int = 10,
                batch: int = 4, seq: int = 16, table_opt: str = "adamw") -> dict:
    """fp32: first-step gradients and 10-step losses. fp64 (same code paths): parameters after the steps.
    Parameters are compared in fp64 because fp32 rounding differences from a different summation order
    (e.g. expert rows batched across ranks) flip near-tied top-k routing decisions and Adam's per-element
    normalisation turns such tiny gradient differences into O(lr) parameter differences; in fp64 any
    remaining difference is a bug, not rounding."""
    cfg = model_config(model, overrides)
    ids, doc_starts = make_batches(cfg, steps, batch, seq)
    groups = init_process_groups(ParallelConfig(**layout), cfg)
    return {"fp32": _compare(cfg, groups, ids, doc_starts, table_opt, torch.float32, grad_check=True),
            "fp64": _compare(cfg, groups, ids, doc_starts, table_opt, torch.float64, grad_check=False)}


def _per_row_step(model, groups, ids, doc_starts, opts, update: bool) -> float:
    """Mean over the global batch of per-row losses (micro-batches of one row), identical for any world
    size; optionally one optimizer step."""
    rows = ids.chunk(groups.dp)[groups.dp_rank]
    starts = doc_starts.chunk(groups.dp)[groups.dp_rank]
    for o in opts:
        o.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64)
    for x, d in zip(rows.split(1), starts.split(1)):
        loss = model(x, doc_starts=d).loss / ids.shape[0] * groups.dp
        loss.backward()
        total += loss.detach().double() / groups.dp
    dist.all_reduce(total, group=groups.dp_group)
    if update:
        sync_gradients(model, groups)
        for o in opts:
            o.step()
    return total.item()


def reshard(rank: int, world: int, phase: str, directory: str, table_opt: str = "adamw") -> list[float]:
    """phase "save": 2 steps, save, then next-step loss / one more step / loss. phase "load": load the
    checkpoint saved on another world size and do the same from there."""
    from pathlib import Path
    from pipeline.parallel.sharded_checkpoint import load_row_shards, save_row_shards
    cfg = model_config("tiny-olmoe-ot", [])
    ids, doc_starts = make_batches(cfg, 4, 4, 16)
    groups = init_process_groups(ParallelConfig(), cfg)
    model = parallelize(seeded_model(cfg, torch.float32), groups)
    opts = optimizers(model, table_opt)
    oe = model.over_encoding
    dense_path = Path(directory) / "dense.pt"
    if phase == "save":
        for step in range(2):
            _per_row_step(model, groups, ids[step], doc_starts[step], opts, update=True)
        save_row_shards(Path(directory) / "oe", oe.table, oe.sharding.bounds(), oe.sharding.global_rows,
                        groups.oe_group, opts[1])
        if rank == 0:
            dense = {k: v for k, v in model.state_dict().items() if k != "over_encoding.table"}
            torch.save({"model": dense, "optimizer": opts[0].state_dict()}, dense_path)
        dist.barrier()
    else:
        saved = torch.load(dense_path, weights_only=True)
        missing, unexpected = model.load_state_dict(saved["model"], strict=False)
        assert missing == ["over_encoding.table"] and not unexpected, (missing, unexpected)
        opts[0].load_state_dict(saved["optimizer"])
        load_row_shards(Path(directory) / "oe", oe.table, oe.sharding.bounds(), oe.sharding.global_rows, opts[1])
    next_loss = _per_row_step(model, groups, ids[2], doc_starts[2], opts, update=True)
    after = _per_row_step(model, groups, ids[3], doc_starts[3], opts, update=False)
    return [next_loss, after]
