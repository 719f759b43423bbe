"""Build a run: process group, data, model, optimizer + schedule, DeepSpeed engine, callbacks, then resume."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from pipeline.config.run import RunConfig, run_config_to_yaml
from pipeline.data.loader import build_loaders
from pipeline.train.bad_steps import SkippableAdamW, find_skippable_optimizers
from pipeline.train.callbacks import CheckpointCallback, MetricsCallback, SpeedCallback, ValidationCallback
from pipeline.train.callbacks.checkpoint import CheckpointCostMetrics
from pipeline.train.callbacks.run_lock import RunLockCallback
from pipeline.train.deepspeed_config import build_deepspeed_config
from pipeline.train.distributed import DistInfo, init_distributed, populate_env
from pipeline.train.layout_free import LayoutFreeState
from pipeline.train.lr_schedule import WarmupDecaySchedule
from pipeline.train.oe_health import OEHealthCallback
from pipeline.train.parallel_run import ParallelRun, check_run_layout
from pipeline.train.param_groups import build_param_groups
from pipeline.train.resume import precheck_resume, resume_trainer, start_over
from pipeline.train.rng_state import seed_everything
from pipeline.train.run_lock import RunLock
from pipeline.train.run_summary import write_run_summary
from pipeline.train.tensorboard_layout import custom_scalars_layout
from pipeline.train.trainer import Trainer


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """A client torch AdamW with its fused kernel (CUDA and CPU: one pass over each parameter's weight, gradient
    and moments; on CPU 5.6x faster than foreach, docs/performance.md). DeepSpeed's own "AdamW" would be
    FusedAdam / cpu_adam, which JIT-compile for 1-2 minutes on a fresh machine."""
    o = cfg.optim
    impl = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return SkippableAdamW(build_param_groups(model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                             weight_decay=o.weight_decay, **impl)


def build_engine(model: torch.nn.Module, cfg: RunConfig, world_size: int, device: torch.device,
                 parallel: ParallelRun | None = None):
    """`world_size`: the data-parallel size (batch arithmetic). `parallel`: the layout (mpu for tp, clipping
    moved out of DeepSpeed when parameters live outside the engine)."""
    import deepspeed

    optimizer = build_optimizer(model, cfg, device)
    schedule = WarmupDecaySchedule(optimizer, cfg.schedule)
    ds_config = build_deepspeed_config(cfg, world_size)
    external = parallel.external if parallel is not None else None
    if parallel is not None:
        ds_config = parallel.adjust_deepspeed_config(ds_config)
    if external is not None:
        external.hook_client_optimizer(optimizer)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=ds_config, dist_init_required=False,
                                           mpu=parallel.mpu if parallel is not None else None)
    if external is not None:
        external.attach(engine)
    return engine


def build_trainer(cfg: RunConfig, dist_info: DistInfo | None = None, model_factory=None,
                  config_path: str | None = None) -> Trainer:
    """`model_factory(model_cfg) -> nn.Module` defaults to pipeline.model.build_model on the meta device with
    seed train.seed (the initial values depend on that seed only, not on the layout). `config_path`: the run
    config file, named in the start-of-run summary (run_dir/summary.txt)."""
    if dist_info is None:
        # The layout, the run_dir lock and the resume rules are checked on every rank before any process-group
        # work, so a bad `parallel:` section, a second job in run_dir or a resume that would change the model
        # fails at once with one line instead of after a rendezvous.
        populate_env()
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        check_run_layout(cfg, world)
    else:
        rank, world = dist_info.rank, dist_info.world_size
    lock = RunLock(cfg.run_dir, rank, cfg.train.lock_stale_s)
    lock.acquire()   # before anything in run_dir is read, written or deleted
    try:
        return _build(cfg, dist_info, model_factory, rank, world, lock, config_path)
    except BaseException:
        lock.release()
        raise


def _build(cfg: RunConfig, dist_info: DistInfo | None, model_factory, rank: int, world: int,
           lock: RunLock, config_path: str | None = None) -> Trainer:
    precheck_resume(cfg, world)
    if cfg.train.resume == "restart" and rank == 0:
        start_over(cfg)
    if dist_info is None:
        dist_info = init_distributed(cfg.deepspeed.backend, cfg.deepspeed.timeout_s)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # our console line replaces its INFO chatter
    seed_everything(cfg.train.seed)
    parallel = ParallelRun(cfg, dist_info)   # validates the `parallel:` layout, builds the process groups
    train_data, val_data, _ = build_loaders(
        cfg.data, cfg.model.vocab_size, cfg.train.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size,
        cfg.eval.batches, parallel.dp_rank, parallel.dp_size, max_steps=cfg.train.max_steps)
    if model_factory is None:
        # meta: nothing is allocated before the parallel layout says what this rank owns (prepare_model)
        from pipeline.model import build_model
        model = build_model(cfg.model, device="meta", seed=cfg.train.seed)
    else:
        model = model_factory(cfg.model)   # materialised (shards copied) or on meta (materialised per rank)
    model = parallel.prepare_model(model)
    engine = build_engine(model, cfg, parallel.dp_size, dist_info.device, parallel)
    layout_free = LayoutFreeState(engine, find_skippable_optimizers(engine)[0], parallel.dp_rank,
                                  parallel.groups.tp_rank if parallel.groups is not None else 0, parallel.external)
    trainer = Trainer(cfg, dist_info, engine, train_data, build_callbacks(cfg, dist_info, parallel, val_data, lock),
                      external=parallel.external, config_yaml=run_config_to_yaml(cfg), layout_free=layout_free)
    t0 = time.perf_counter()
    ckpt = resume_trainer(trainer, cfg, world, rank)
    if ckpt is not None and rank == 0:
        print(f"resumed from {ckpt} at step {trainer.step} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if dist_info.rank == 0:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        oe_rows = next((p.end - p.start for p in (parallel.external.params if parallel.external else [])
                        if p.kind == "oe_table"), None)
        write_run_summary(cfg, world, config_path, f"resumed from {ckpt}" if ckpt is not None else "fresh start",
                          oe_rows)
    return trainer


def build_callbacks(cfg: RunConfig, dist_info: DistInfo, parallel: ParallelRun, val_data, lock: RunLock) -> list:
    """The run's callbacks; the Trainer orders them by priority (speed, OE health, validation, zero-shot eval,
    the last save's cost, metrics, checkpoint, and last the run_dir lock's release)."""
    saver = CheckpointCallback(cfg.checkpoint.every, cfg.checkpoint.save_at_end)
    callbacks = [SpeedCallback(cfg.train.global_batch_size * cfg.data.seq_len, _flops_per_token(cfg),
                               cfg.log.peak_flops_per_device, dist_info.world_size),
                 ValidationCallback(val_data, cfg.eval.every, cfg.eval.at_end),
                 MetricsCallback(cfg.run_dir, cfg.log.tensorboard, cfg.log.histogram_every, dist_info.rank,
                                 n_layers=cfg.model.n_layers, layout=custom_scalars_layout(cfg)),
                 saver, CheckpointCostMetrics(saver), RunLockCallback(lock)]
    if cfg.log.oe_health and cfg.model.over_encoding.enabled:
        callbacks.append(OEHealthCallback())
    if cfg.eval.downstream_every:
        callbacks.append(_downstream_callback(cfg, dist_info.rank, parallel))
    return callbacks


def _downstream_callback(cfg: RunConfig, rank: int, parallel):
    from pipeline.data.tokenizer import tokenizer_record_from_run_config
    from pipeline.train.callbacks.downstream import DownstreamEvalCallback
    record = tokenizer_record_from_run_config({"data": {"path": cfg.data.primary_path}})
    return DownstreamEvalCallback(cfg.eval, record, cfg.model.vocab_size, cfg.run_dir, rank,
                                  forward_has_collectives=parallel.groups is not None)


def _flops_per_token(cfg: RunConfig) -> int | None:
    from pipeline.model.flops import training_flops_per_token
    return training_flops_per_token(cfg.model, cfg.data.seq_len)
