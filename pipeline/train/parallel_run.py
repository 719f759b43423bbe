"""The run's parallel layout (`parallel:` section) applied to training: process groups, the parallelize step,
and which parameters stay OUT of the DeepSpeed engine.

    par = ParallelRun(cfg, dist_info)              # validates the layout (one-line ConfigError), builds groups
    loaders use par.dp_rank / par.dp_size          # tp peers read the same data
    model = par.prepare_model(build_model(...))    # swaps modules, takes the sharded parameters out
    engine = deepspeed.initialize(..., mpu=par.mpu, config=par.adjust_deepspeed_config(ds_config))
    par.external.attach(engine)                    # see pipeline/train/external_params.py

Why some parameters live outside the engine: DeepSpeed treats every module parameter as a data-parallel
replica. At initialize it broadcasts each one from rank 0 and (ZeRO-0) all-reduces each gradient over the
data-parallel ranks; ZeRO-1/2/3 partition them over those ranks. That is wrong for
- the row-sharded OE table (paper §3.3): every rank holds DIFFERENT rows; the table must never be
  gathered, all-reduced or partitioned, and its gradient and optimizer state stay on the owner;
- expert shards (ep > 1): ranks hold different experts. DeepSpeed only averages such parameters over the
  expert-data-parallel group when the module is its own `deepspeed.moe.layer.MoE` (it marks their params
  `allreduce=False` and reduces them over `_get_expert_data_parallel_group`), and its MoE checkpointing parses
  that class's per-expert module names (`deepspeed_moe.experts.deepspeed_experts.N`), which our stacked,
  dropless GroupedExperts do not have. So the expert shards are kept outside too, and their gradients are
  averaged over the expert-data-parallel group by us (external_params.py), the rule that the model-level
  expert-parallel equivalence tests (tests/pipeline/parallel) prove against one process.
A detached parameter stays a plain attribute of its module (forward reads it as before) but is no longer in
`parameters()` / `state_dict()`, so DeepSpeed never sees it; its checkpoint is written by external_params.py.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn

from pipeline.config.base import ConfigError
from pipeline.config.run import RunConfig
from pipeline.train.distributed import DistInfo
from pipeline.train.external_params import ExternalParam, ExternalParams


def check_run_layout(cfg: RunConfig, world: int) -> None:
    """Every layout error before any collective or model build (one line naming the key)."""
    from pipeline.parallel.process_groups import check_layout

    layout = cfg.parallel
    if cfg.model.compile and cfg.deepspeed.zero_stage == 3:
        # ZeRO-3 gathers each module's parameters in hooks around its forward; inside a compiled block they
        # would have to be traced too (unsupported here), so compiled blocks need the parameters resident.
        raise ConfigError("model.compile: true is not supported with deepspeed.zero_stage=3; use zero_stage 0-2")
    if world % (layout.tp * layout.ep):
        raise ConfigError(f"parallel: world size {world} is not divisible by tp x ep = {layout.tp} x {layout.ep}")
    check_layout(layout, world, cfg.model)


def detach_parameter(module: nn.Module, name: str) -> nn.Parameter:
    """Remove `module.<name>` from the module's registered parameters but keep it readable as
    `module.<name>` (an instance attribute), so forward works unchanged and DeepSpeed never sees it."""
    param = getattr(module, name)
    delattr(module, name)                     # nn.Module.__delattr__: drops it from the registered parameters
    object.__setattr__(module, name, param)   # plain attribute; bypasses nn.Module's registration on purpose
    return param


class MegatronMPU:
    """DeepSpeed's `mpu` interface over megatron-core's parallel_state: "model parallel" = tensor parallel
    (no pipeline stages). Given to deepspeed.initialize so its data-parallel size, ZeRO partitioning and
    gradient norm (tp-sharded parameters counted once per shard, replicated ones once) are right."""

    def __init__(self):
        from megatron.core import parallel_state as ps
        self.ps = ps

    def get_model_parallel_rank(self): return self.ps.get_tensor_model_parallel_rank()
    def get_model_parallel_world_size(self): return self.ps.get_tensor_model_parallel_world_size()
    def get_model_parallel_group(self): return self.ps.get_tensor_model_parallel_group()
    def get_tensor_model_parallel_rank(self): return self.ps.get_tensor_model_parallel_rank()
    def get_tensor_model_parallel_world_size(self): return self.ps.get_tensor_model_parallel_world_size()
    def get_tensor_model_parallel_group(self): return self.ps.get_tensor_model_parallel_group()
    def get_tensor_model_parallel_src_rank(self): return self.ps.get_tensor_model_parallel_src_rank()
    def get_data_parallel_rank(self): return self.ps.get_data_parallel_rank()
    def get_data_parallel_world_size(self): return self.ps.get_data_parallel_world_size()
    def get_data_parallel_group(self): return self.ps.get_data_parallel_group()
    def get_pipeline_model_parallel_world_size(self): return 1
    def get_pipeline_model_parallel_group(self): return self.ps.get_pipeline_model_parallel_group()


class ParallelRun:
    def __init__(self, cfg: RunConfig, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        world = dist_info.world_size
        check_run_layout(cfg, world)
        layout = cfg.parallel
        self.groups = None
        self.uses_oe = cfg.model.over_encoding.enabled
        # megatron-core groups (a ~6 s import) only when something is actually split across ranks
        if world > 1 and (self.uses_oe or layout.tp > 1 or layout.ep > 1):
            from pipeline.parallel.process_groups import init_process_groups
            self.groups = init_process_groups(layout, cfg.model)
        self.tp = layout.tp
        self.dp_rank = self.groups.dp_rank if self.groups else dist_info.rank
        self.dp_size = self.groups.dp if self.groups else world
        self.mpu = MegatronMPU() if layout.tp > 1 else None
        self.external: ExternalParams | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Parallelize, mark tp shards for DeepSpeed, and take the sharded parameters out of the module.
        A model built on the meta device is materialised here, on this rank's device, holding only what the
        rank owns (its OE rows, experts, TP slices; the replicated dense part whole, also under ZeRO-3, which
        partitions it at deepspeed.initialize), initialised to the single-process values in bounded blocks."""
        g = self.groups
        on_meta = any(p.is_meta for p in model.parameters())
        if g is not None:
            from pipeline.parallel.parallelize import parallelize
            parallelize(model, g)
        if on_meta:
            from pipeline.parallel.parallelize import materialize_local
            materialize_local(model, self.dist.device)
        if self.tp > 1:
            self._mark_tensor_parallel(model)
        params: list[ExternalParam] = []
        oe = getattr(model, "over_encoding", None)
        if oe is not None:
            rows = int(oe.table.shape[0]) if g is None else oe.sharding.global_rows
            start, end = (0, rows) if g is None else oe.sharding.bounds()
            # With oe_shard_group "dp" the tp peers of a data-parallel rank hold the same rows.
            copies = self.tp if (g is not None and self.cfg.parallel.oe_shard_group == "dp") else 1
            params.append(ExternalParam("over_encoding.table", detach_parameter(oe, "table"), "oe_table",
                                        start, end, rows, g.oe_group if g else None, copies,
                                        writer=(g is None or copies == 1 or g.tp_rank == 0)))
        if g is not None and g.ep > 1:
            from pipeline.parallel.expert_parallel import ExpertParallelMoE
            for name, module in model.named_modules():
                if isinstance(module, ExpertParallelMoE):
                    first = g.ep_rank * module.local_experts
                    for w in ("w_gate", "w_up", "w_down"):
                        p = detach_parameter(module.experts, w)
                        # each expert shard exists on the dp/ep ranks of its expert-data-parallel group
                        params.append(ExternalParam(f"{name}.experts.{w}", p, "experts", first,
                                                    first + module.local_experts, module.n_experts, g.ep_group,
                                                    g.dp // g.ep, writer=dist.get_rank(g.edp_group) == 0))
        if oe is not None and self.cfg.parallel.table_optimizer == "row_sparse_adam":
            # Sparse table gradients: backward, clipping and the optimizer touch only the rows looked up in
            # the step instead of a table-sized dense gradient (measured in docs/performance.md).
            from pipeline.parallel.table_optimizers import use_sparse_table_grads
            use_sparse_table_grads(model)
        device = self.dist.device
        for ep in params:
            ep.param.data = ep.param.data.to(device)
        self.external = ExternalParams(params, self.cfg, self.groups, self.dist) if params else None
        if self.cfg.model.compile:       # last: the blocks compiled are the swapped-in, materialised ones
            from pipeline.parallel.compile import compile_blocks
            compile_blocks(model)
        return model

    def _mark_tensor_parallel(self, model: nn.Module) -> None:
        """megatron's layers mark their shards `tensor_model_parallel`; mark our TP norms' shards the same
        way so DeepSpeed's norm counts each of them (and every replicated parameter only once)."""
        from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

        from pipeline.parallel.shard_info import shard_info
        for p in model.parameters():
            info = shard_info(p)
            if info is not None and not getattr(p, "tensor_model_parallel", False):
                set_tensor_model_parallel_attributes(p, True, info.dim, 1)

    def adjust_deepspeed_config(self, ds_config: dict) -> dict:
        """Clipping moves out of DeepSpeed when parameters live outside it: the clip coefficient must use the
        global norm over engine AND external gradients (external_params.py applies it to both)."""
        if self.external is not None:
            ds_config["gradient_clipping"] = 0.0
        return ds_config
