"""The optimizer step of the parameters kept outside DeepSpeed (row-sharded OE table, expert shards), and the
global gradient clipping that covers them together with the engine's parameters.

Per optimizer step (the Trainer calls these at the accumulation boundary):
  1. before_engine_step(): expert shards: all-reduce (sum) over the expert-data-parallel group and divide by
     dp (the owner already holds the sum over its EP group's tokens). OE table shards: nothing - the owner
     already holds the data-parallel mean (sharded_lookup's backward). Then ONE all-reduce over the world of
     the external squared norm, each distinct element counted once:
         S_ext = sum over ranks of (||table shard grad||^2 / copies_t + ||expert shard grad||^2 / copies_e)
     (copies_t = tp when tables are split over the dp ranks, each tp peer holding the same rows; copies_e =
     dp/ep, the expert-data-parallel replicas).
  2. engine.step(): DeepSpeed computes the global norm G_e of ITS gradients (ZeRO-1/2/3 and bf16: its own
     partitioned, mpu-aware norm; ZeRO-0 fp32: we compute it over the full averaged gradients, tp shards
     summed over the tp group, replicated parameters counted once). Its own clipping is switched off
     (gradient_clipping 0); a step pre-hook on the client optimizer computes
         T = sqrt(G_e^2 + S_ext),   c = min(1, optim.grad_clip / (T + 1e-6))
     (torch's clip_grad_norm_ formula) and multiplies the engine gradients by c before the update.
     T is what the metrics log as grad_norm.
  3. after_engine_step(): the external gradients are multiplied by the same c and their optimizers step with
     the same lr schedule as the engine (OE table: lr x optim.oe_lr_multiplier, weight decay
     optim.oe_weight_decay, optimizer parallel.table_optimizer; experts: AdamW with lr and optim.weight_decay,
     as the engine's decay group). A skipped step (non-finite loss, or DeepSpeed's overflow check) skips them too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.train.lr_schedule import lr_factor


@dataclass
class ExternalParam:
    name: str                 # the parameter's name in the unsharded model
    param: torch.nn.Parameter
    kind: str                 # "oe_table" | "experts"
    start: int                # rows (table) / experts held: [start, end) of `full`
    end: int
    full: int
    group: object             # the process group the rows are split over (None: one process)
    copies: int               # how many ranks hold this same shard
    writer: bool = True       # this rank writes the shard in checkpoints (one copy per shard)


def _sq_norm(g: torch.Tensor) -> torch.Tensor:
    if g.is_sparse:
        g = g.coalesce().values()
    return g.detach().double().square().sum()


class ExternalParams:
    def __init__(self, params: list[ExternalParam], cfg, groups, dist_info):
        from pipeline.parallel.table_optimizers import build_table_optimizer

        self.params, self.cfg, self.groups, self.dist = params, cfg, groups, dist_info
        o = cfg.optim
        self.optimizers: list[tuple[torch.optim.Optimizer, float]] = []   # (optimizer, peak lr)
        tables = [p.param for p in params if p.kind == "oe_table"]
        experts = [p.param for p in params if p.kind == "experts"]
        self.table_optimizer = self.expert_optimizer = None
        if tables:
            lr = o.lr * o.oe_lr_multiplier
            self.table_optimizer = build_table_optimizer(cfg.parallel.table_optimizer, tables, lr=lr,
                                                         betas=tuple(o.betas), eps=o.eps,
                                                         weight_decay=o.oe_weight_decay)
            self.optimizers.append((self.table_optimizer, lr))
        if experts:
            impl = {"fused": True} if dist_info.device.type == "cuda" else {"foreach": True}
            self.expert_optimizer = torch.optim.AdamW(experts, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                                      weight_decay=o.weight_decay, **impl)
            self.optimizers.append((self.expert_optimizer, o.lr))
        self.engine = None
        self.tp_group = groups.tp_group if groups is not None and groups.tp > 1 else None
        self._ext_sq: float = 0.0
        self._coef: float | None = None
        self._scaled: set[int] = set()
        self.last_grad_norm: float | None = None

    # ---- wiring --------------------------------------------------------------------------------------
    def hook_client_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Call on the client optimizer before deepspeed.initialize: clipping with the global norm."""
        optimizer.register_step_pre_hook(self._clip_engine_grads)

    def attach(self, engine) -> None:
        self.engine = engine

    # ---- the step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def before_engine_step(self) -> None:
        """Collective, at the accumulation boundary, before engine.step()."""
        g = self.groups
        local = torch.zeros((), dtype=torch.float64)
        for ep in self.params:
            if ep.param.grad is None:
                continue
            if ep.kind == "experts":
                dist.all_reduce(ep.param.grad, group=g.edp_group)
                ep.param.grad.div_(g.dp)
            local += _sq_norm(ep.param.grad).cpu() / ep.copies
        if dist.is_initialized() and dist.get_world_size() > 1:
            local = local.to(self._comm_device())
            dist.all_reduce(local)
        self._ext_sq = float(local)
        self._coef = None
        self._scaled: set[int] = set()

    def _comm_device(self) -> torch.device:
        return self.dist.device if self.dist.backend == "nccl" else torch.device("cpu")

    @torch.no_grad()
    def _engine_sq_norm(self, optimizer: torch.optim.Optimizer) -> float:
        wrapper = getattr(self.engine, "optimizer", None)
        if wrapper is not None and wrapper is not optimizer:
            # ZeRO-1/2/3 and the bf16 optimizer compute the engine's global norm before calling the client
            # optimizer's step (DeepSpeed keeps it in `_global_grad_norm`, which engine.get_global_grad_norm()
            # returns after the step).
            norm = getattr(wrapper, "_global_grad_norm", None)
            if norm is not None:
                return float(norm) ** 2
        # ZeRO-0 fp32: the client optimizer holds the full, already averaged gradients.
        sq = torch.zeros((), dtype=torch.float64)
        tp_rank = dist.get_rank(self.tp_group) if self.tp_group is not None else 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False)):
                    sq += _sq_norm(p.grad).cpu()
        if self.tp_group is not None:
            sq = sq.to(self._comm_device())
            dist.all_reduce(sq, group=self.tp_group)
        return float(sq)

    def coefficient(self, optimizer: torch.optim.Optimizer) -> float:
        if self._coef is None:
            total = math.sqrt(self._engine_sq_norm(optimizer) + self._ext_sq)
            self.last_grad_norm = total
            clip = self.cfg.optim.grad_clip
            coef = clip / (total + 1e-6) if clip > 0 else 1.0
            # a non-finite norm means a bad step that is skipped anyway: leave the gradients as they are
            self._coef = min(1.0, coef) if math.isfinite(coef) else 1.0
        return self._coef

    @torch.no_grad()
    def _clip_engine_grads(self, optimizer, args, kwargs) -> None:
        # DeepSpeed's ZeRO calls the client step once per parameter group (with param_groups narrowed to that
        # group): the coefficient is computed once per optimizer step and applied to each group's gradients.
        # The hook may also fire more than once per call: torch wraps every Optimizer subclass's step with the
        # hook runner, so a subclass whose step calls super().step() (SkippableAdamW) runs it twice. ZeRO-3
        # reuses one group dict with a different flat partition per sub-group. So each gradient tensor is
        # scaled once per optimizer step, tracked by parameter identity (DeepSpeed's flat partitions live all run).
        coef = self.coefficient(optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None or id(p) in self._scaled:
                    continue
                self._scaled.add(id(p))
                if coef < 1.0:
                    p.grad.mul_(coef)

    @torch.no_grad()
    def after_engine_step(self, step: int, skipped: bool) -> None:
        """After engine.step() of optimizer step `step` (1-based): clip and step the external parameters."""
        coef = self._coef   # None: DeepSpeed skipped its update (overflow) and never called the client step
        if not skipped and coef is not None:
            factor = lr_factor(step - 1, self.cfg.schedule)   # step s uses the factor of s-1 updates taken
            for p in self.params:
                if p.param.grad is not None and coef < 1.0:
                    p.param.grad.mul_(coef)
            for opt, peak in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = peak * factor
                opt.step()
        for p in self.params:
            p.param.grad = None
        self._coef = None

    def learning_rates(self, step: int) -> dict[str, float]:
        if self.table_optimizer is None:
            return {}
        return {"lr_oe": self.cfg.optim.lr * self.cfg.optim.oe_lr_multiplier * lr_factor(step - 1, self.cfg.schedule)}

    # ---- checkpoints -----------------------------------------------------------------------------------
    def optimizer_of(self, p: ExternalParam):
        return self.table_optimizer if p.kind == "oe_table" else self.expert_optimizer

    def save(self, folder: Path) -> None:
        """Collective: every shard with its optimizer state under folder/<name>/ (resharding format,
        pipeline/parallel/sharded_checkpoint.py). One copy of each shard writes."""
        from pipeline.parallel.sharded_checkpoint import save_row_shards

        for p in self.params:
            if p.writer:
                save_row_shards(Path(folder) / p.name, p.param, (p.start, p.end), p.full, p.group,
                                self.optimizer_of(p))
        if dist.is_initialized():
            dist.barrier()

    def load(self, folder: Path) -> None:
        """Not collective: read this rank's rows from shards saved on any number of ranks."""
        from pipeline.parallel.sharded_checkpoint import load_row_shards

        for p in self.params:
            shard_dir = Path(folder) / p.name
            if not shard_dir.is_dir():
                raise FileNotFoundError(f"{shard_dir}: missing (the checkpoint was saved with a layout that kept "
                                        f"{p.name} inside DeepSpeed)")
            load_row_shards(shard_dir, p.param, (p.start, p.end), p.full, self.optimizer_of(p))
