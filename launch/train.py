"""Train a model: `python launch/train.py --config configs/run/demo.yaml [key=value ...]`.

The same command runs under the launchers (one process per rank):
    deepspeed --num_accelerators 2 launch/train.py --config F [key=value ...]   (CPU: say how many ranks)
    torchrun --nproc_per_node 2 launch/train.py --config F [key=value ...]
    mpirun -np 2 python launch/train.py --config F [key=value ...]
Overrides are dotted keys of the run config (pipeline/config/run.py), e.g. `train.max_steps=50 optim.lr=1e-3
deepspeed.zero_stage=2 model=configs/model/olmoe-7b.yaml`. A run resumes from run_dir's latest checkpoint
by default (train.resume=auto). Configuration and data problems end with a one-line error and exit code 2;
failures during training (a checkpoint that cannot be written, too many non-finite steps, a collective that
failed or timed out because another rank died) with a one-line error and exit code 3. A stop signal
(train.stop_signals, default SIGTERM and SIGUSR1) or train.max_duration_s ends the run after the current step
with a checkpoint and exit code 75; rerunning the same command resumes exactly. Under torchrun, which exits 1
whatever its ranks' exit code, run_dir/PREEMPTED tells that stop apart (`--print-run-dir` says where run_dir
is), and a stopped run is not restarted by `torchrun --max-restarts` (pipeline/train/distributed.py).
"""
from __future__ import annotations

# Only the standard library at module level: the pipeline modules import torch, which must not load before
# main() has set OMP_WAIT_POLICY (see there).
import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML (configs/run/*.yaml)")
    # Set by the deepspeed launcher; LOCAL_RANK in the environment carries the same information.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--print-run-dir", action="store_true",
                   help="print the run_dir that the config and overrides give, and exit (launch/slurm.sbatch\n"
                        "looks for run_dir/PREEMPTED there)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    return p.parse_args(argv)


def final_summary(run_dir: Path) -> str:
    """The last validation result of the run (from metrics.jsonl) and where to look at it."""
    last_val = None
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "val_loss" in record:
                last_val = record
    result = (f"final validation loss {last_val['val_loss']:.4f} (perplexity {last_val['val_ppl']:.2f}) at step "
              f"{last_val['step']}" if last_val else "no validation result (the data has no val split?)")
    # #custom_scalars: the page with the run's layout (loss, MTP, lr, throughput, MoE, OE health) first
    return (f"{result}\nrun: {run_dir}\nwatch: tensorboard --logdir {run_dir / 'tensorboard'}  "
            f"(then http://localhost:6006/#custom_scalars)")


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning. With spinning (the default), a CPU run slows down 5x as soon
    # as another process takes one of the cores (measured on the 2-core machines); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from pipeline.config.base import ConfigError
    from pipeline.config.run import load_run_config
    from pipeline.data.indexed_dataset import ShardError
    from pipeline.data.loader import DataMismatchError
    from pipeline.train.bad_steps import TrainingDivergedError
    from pipeline.train.checkpoint import CheckpointWriteError
    from pipeline.train.checkpoint_manifest import CheckpointDamaged
    from pipeline.train.checkpoint_safety import UnsafeCheckpointError
    from pipeline.train.run_lock import RunDirLocked

    try:
        cfg = load_run_config(args.config, args.overrides)
        if args.print_run_dir:
            print(cfg.run_dir, flush=True)
            return 0
        from pipeline.train.build import build_trainer

        trainer = build_trainer(cfg, config_path=args.config)
    except (ConfigError, ShardError, DataMismatchError, FileNotFoundError, UnsafeCheckpointError, CheckpointDamaged,
            RunDirLocked) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import torch.distributed as dist

    if trainer.step >= trainer.stop_step and trainer.dist.rank == 0:
        print(f"{cfg.run_dir} is already at step {trainer.step}: nothing to train", flush=True)
    from pipeline.train.preemption import STOPPED_EXIT_CODE, StopRequested

    try:
        trainer.fit()
    except StopRequested as e:
        if trainer.dist.rank == 0:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
        from pipeline.train.distributed import keep_elastic_agent_from_restarting

        keep_elastic_agent_from_restarting()
        return STOPPED_EXIT_CODE
    except (CheckpointWriteError, TrainingDivergedError) as e:
        print(f"error: rank {trainer.dist.rank}: {e}", file=sys.stderr, flush=True)
        return 3
    except RuntimeError as e:  # a peer died, or a collective ran past deepspeed.timeout_s
        from pipeline.train.distributed import is_collective_failure

        if not is_collective_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: rank {trainer.dist.rank}: a collective failed at step {trainer.step} (another rank died, "
              f"hangs, or the network failed; limit deepspeed.timeout_s={cfg.deepspeed.timeout_s:g}): {first}",
              file=sys.stderr, flush=True)
        # The broken process group cannot be torn down: its transport threads are still inside the failed
        # operation, and destroying it at interpreter exit aborts the process (SIGABRT, "terminate called").
        # Leave without running destructors so the exit code stays 3.
        sys.stdout.flush()
        os._exit(3)
    if trainer.dist.rank == 0:
        print(final_summary(Path(cfg.run_dir)), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
