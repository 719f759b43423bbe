"""Checkpoint save / load time and size (issue 15): the demo model on 1 rank and a 1 GiB OE table on 2 ranks,
without and with the layout-free state (checkpoint.layout_free false / true), against the disk's own write
speed.

Per case, on every rank (spawned gloo ranks, one CPU thread each): build the run, train one step, then time
  save        Trainer.save_checkpoint: DeepSpeed's files, the external OE/expert shards, the layout-free state,
              RNGs, trainer state, checksums (sha256 of every file, split over the ranks), atomic rename
  load        Trainer.resume_from on the same layout (DeepSpeed's loader + external shards)
  repartition Trainer.resume_from(repartition=True): the path a resume on another layout takes (layout-free
              state and external shards read by slices), here onto the same layout
and the folder's bytes. `write ceiling` = bytes / (the disk's sequential write speed, measured here by writing
and fsyncing 512 MiB), i.e. the save time if only the bytes had to reach the disk; `save/ceiling` is what the
rest (serialisation, hashing, DeepSpeed's bookkeeping) costs on top.

    DS_ACCELERATOR=cpu python bench/checkpoint_cost.py [--gib 1.0] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.ranks import spawn_ranks
from bench.startup_memory import table_m, write_shards
from bench.timing import load_average, write_json

MIB = 2**20


def disk_write_speed(folder: Path, nbytes: int = 512 * MIB) -> float:
    """Bytes/s of one sequential write + fsync of `nbytes` into `folder`."""
    buf = os.urandom(MIB) * (nbytes // MIB)
    path = folder / "speed.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds


def _rank(rank: int, world: int, port: int, out, config: str, overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)

    from pipeline.config.run import load_run_config
    from pipeline.train.build import build_trainer
    trainer = build_trainer(load_run_config(config, overrides))
    trainer.fit()

    def timed(fn) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - t0

    path: list[Path] = []
    save = timed(lambda: path.append(trainer.save_checkpoint()))
    load = timed(lambda: trainer.resume_from(path[0]))
    repartition = timed(lambda: trainer.resume_from(path[0], repartition=True)) \
        if trainer.cfg.checkpoint.layout_free else float("nan")
    result = {"save_s": save, "load_s": load, "repartition_s": repartition}
    if rank == 0:
        from pipeline.train.checkpoint import LAYOUT_FREE_DIR, folder_bytes
        result.update(bytes=folder_bytes(path[0]), layout_free_bytes=folder_bytes(path[0] / LAYOUT_FREE_DIR))
    out.put((rank, result))


def cases(shards: str, gib: float) -> list[tuple[str, int, str, list[str]]]:
    quiet = [f"data.path={shards}", "eval.every=0", "eval.at_end=false", "log.tensorboard=false",
             "checkpoint.every=0", "checkpoint.save_at_end=false", "train.max_steps=1", "checkpoint.keep_last=0"]
    out = []
    for layout_free in ("false", "true"):
        lf = f"checkpoint.layout_free={layout_free}"
        out.append(("demo model (6.5M params)", 1, "configs/run/demo.yaml",
                    [*quiet, lf, "data.seq_len=64", "train.global_batch_size=4", "train.micro_batch_size=2"]))
        out.append((f"{gib:g} GiB OE table, ZeRO-2", 2, "configs/run/tiny-cpu.yaml",
                    [*quiet, lf, f"model.over_encoding.m={table_m(gib * 2**30)}", "deepspeed.zero_stage=2",
                     "train.micro_batch_size=1", "train.global_batch_size=2"]))
    return out


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="OE table size (fp32) of the 2-rank case")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    record = {"bench": "checkpoint_cost", "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        speed = disk_write_speed(Path(tmp))
        record["disk_write_bytes_per_s"] = speed
        print(f"disk sequential write: {speed / MIB:.0f} MiB/s")
        print(f"{'case':<26} {'world':>5} {'layout_free':>11} {'MiB':>8} {'of which l-f':>12} {'save s':>7} "
              f"{'write ceiling s':>15} {'save/ceiling':>12} {'load s':>7} {'repartition s':>13}")
        shards = str(write_shards(Path(tmp) / "shards"))
        for i, (name, world, config, overrides) in enumerate(cases(shards, args.gib)):
            load0 = load_average()
            ranks = spawn_ranks(_rank, world, (config, [*overrides, f"run_dir={tmp}/run{i}"]), timeout=3600)
            r0 = ranks[0]
            ceiling = r0["bytes"] / speed
            row = {"case": name, "world": world, "overrides": overrides, "ranks": ranks, "ceiling_s": ceiling,
                   "load": [load0, load_average()]}
            record["runs"].append(row)
            lf = "layout_free=true" in " ".join(overrides)
            print(f"{name:<26} {world:>5} {str(lf):>11} {r0['bytes'] / MIB:>8.1f} "
                  f"{r0['layout_free_bytes'] / MIB:>12.1f} {r0['save_s']:>7.2f} {ceiling:>15.2f} "
                  f"{r0['save_s'] / ceiling:>12.2f} {r0['load_s']:>7.2f} {r0['repartition_s']:>13.2f}", flush=True)
    write_json(args.json, record)


if __name__ == "__main__":
    main()
