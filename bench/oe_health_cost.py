"""What the OE health metrics (log.oe_health, pipeline/train/oe_health.py) cost a training step, on CPU.

Trains the same run with log.oe_health on and off, in two regimes:
  every step logged (log.every=1)   the full cost: row marking + norm probe + per-table gradient sums + the
                                    reduction, on every step;
  no step logged (log.every=10000)  what every step pays when it is not logged: the row marking alone
                                    (the last step is still logged, as always).
Each repetition builds a fresh trainer (one process, world 1, fp32 ZeRO-0) and times trainer.fit() over
--steps steps; variants are interleaved and the figure is the median over --reps (bench/timing.py rules),
per step, process CPU time (1 intra-op thread) with wall time beside it.

    DS_ACCELERATOR=cpu .venv/bin/python bench/oe_health_cost.py [--config tiny|demo] [--steps 30] [--reps 5]
        [--json runs/bench/oe_health.json]

`tiny` is configs/run/tiny-cpu.yaml; `demo` is the demo model (configs/run/demo.yaml: D=128, 4 layers,
OE 4 tables of 16,381+ rows, MTP 1, batch 16 x 128 in micro-batches of 8) on the vocabulary of 512 of
bench/startup_memory.py's random shards (no tokenizer has to be trained first).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.startup_memory import write_shards
from bench.timing import interleaved, load_average, median, write_json

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": ("tiny-cpu.yaml", []),
           "demo": ("demo.yaml", ["model.vocab_size=512", "model.padded_vocab_size=512", "train.micro_batch_size=8"])}
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "checkpoint.every=0",
         "checkpoint.save_at_end=false", "train.resume=never"]


def make_run(config: str, shards: Path, root: Path, steps: int, health: bool, log_every: int, times: list):
    """A variant: build a fresh trainer, time its fit(), append (wall, cpu) seconds per step to `times`."""
    import contextlib
    import io

    from pipeline.config.run import load_run_config
    from pipeline.train.build import build_trainer

    name, extra = CONFIGS[config]
    run_dir = root / f"run_{health}_{log_every}"

    def run() -> None:
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_run_config(REPO / "configs" / "run" / name,
                              [f"data.path={shards}", f"run_dir={run_dir}", f"train.max_steps={steps}",
                               f"log.every={log_every}", f"log.oe_health={str(health).lower()}", *QUIET, *extra])
        with contextlib.redirect_stdout(io.StringIO()):   # the console lines and the summary
            trainer = build_trainer(cfg)
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.fit()
            times.append(((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps))
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="oe_health_cost_"))
    shards = write_shards(root / "shards")
    variants, clocks = {}, {}
    for log_every in (1, 10000):
        for health in (False, True):
            key = f"log.every={log_every} oe_health={'on' if health else 'off'}"
            clocks[key] = []
            variants[key] = make_run(args.config, shards, root, args.steps, health, log_every, clocks[key])
    load0 = load_average()
    interleaved(variants, args.reps, warmup=1)
    load1 = load_average()
    record = {"config": args.config, "steps": args.steps, "reps": args.reps, "load": [load0, load1]}
    print(f"{args.config}: per-step time, median of {args.reps} x {args.steps} steps (load {load0:.1f} -> {load1:.1f})")
    for log_every in (1, 10000):
        off, on = (clocks[f"log.every={log_every} oe_health={s}"][1:] for s in ("off", "on"))  # [1:]: warm-up
        cpu_off, cpu_on = median([c for _, c in off]), median([c for _, c in on])
        wall_off, wall_on = median([w for w, _ in off]), median([w for w, _ in on])
        extra = 100 * (cpu_on / cpu_off - 1)
        print(f"  log.every={log_every:<6} cpu {1e3 * cpu_off:8.2f} -> {1e3 * cpu_on:8.2f} ms/step ({extra:+.1f}%)"
              f"   wall {1e3 * wall_off:8.2f} -> {1e3 * wall_on:8.2f} ms/step")
        record[f"log_every_{log_every}"] = {"cpu_off_ms": 1e3 * cpu_off, "cpu_on_ms": 1e3 * cpu_on,
                                            "wall_off_ms": 1e3 * wall_off, "wall_on_ms": 1e3 * wall_on,
                                            "cpu_overhead_pct": extra}
    write_json(args.json, record)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
