"""Start-up peak memory and time of a training run against the Over-Encoding table size (issue 13).

Start-up = pipeline.train.build.build_trainer: process groups, data, the model built on the meta device and
materialised per rank (pipeline/parallel/parallelize.py materialize_local), the DeepSpeed engine. Per rank
it reports, from /proc/self/status: `base` (RSS after the imports), `peak` (VmHWM, the peak RSS, reset to
the current RSS right before build_trainer through /proc/self/clear_refs), `steady` (RSS once start-up is
done), the bytes of the OE table rows the rank holds, and the wall time of build_trainer. The backbone is the
tiny CPU model (d_model 64, 4 OE tables of width 16), so the table is nearly all of the memory.

    DS_ACCELERATOR=cpu python bench/startup_memory.py [--gib 0.25 0.5 1 2] [--worlds 1 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import tempfile
import time
from pathlib import Path

from bench.ranks import spawn_ranks
from bench.timing import load_average, write_json

MIB = 2**20
VOCAB, EOS = 512, 511


def memory_status() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, in bytes."""
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0), so the peak that follows is this phase's own."""
    Path("/proc/self/clear_refs").write_text("5")


def table_m(table_bytes: float, width: int = 64, tables: int = 4) -> int:
    """OE base rows m for a table of about `table_bytes` fp32 bytes: `tables` tables of m (+2t) rows and
    width/tables columns hold about m*width elements. Odd, so no modulus m + 2t is a multiple of 512."""
    m = int(table_bytes / 4 / width)
    return m | 1


def write_shards(folder: Path) -> Path:
    """A small random shard folder (the start-up reads and verifies it; no step is run)."""
    import numpy as np

    from pipeline.data.indexed_dataset import IndexedShardWriter, dtype_for_vocab
    from pipeline.data.manifest import Manifest, ShardRecord, TokenizerRecord, shard_name, write_manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng, dtype, records = np.random.default_rng(0), dtype_for_vocab(VOCAB), []
    for split, n_docs in (("train", 200), ("val", 40)):
        docs = [np.append(rng.integers(0, EOS, size=int(rng.integers(3, 60))), EOS).astype(np.int64)
                for _ in range(n_docs)]
        name = shard_name(split, 0)
        writer = IndexedShardWriter(folder / name, dtype)
        writer.add_documents(np.concatenate(docs), np.array([len(d) for d in docs]))
        info = writer.finish()
        records.append(ShardRecord(split=split, index=0, bin=f"{name}.bin", idx=f"{name}.idx", tokens=info.tokens,
                                   documents=info.documents, bin_sha256=info.bin_sha256,
                                   idx_sha256=info.idx_sha256, bin_bytes=info.bin_bytes, idx_bytes=info.idx_bytes))
    tok = TokenizerRecord(path="bench-tokenizer", sha256="ab" * 32, kind="test", vocab_size=VOCAB, eos_id=EOS)
    write_manifest(folder, Manifest(dtype=dtype, tokenizer=tok, shards=records))
    return folder


def run_overrides(shards: str, run_dir: str, table_bytes: float) -> list[str]:
    return [f"data.path={shards}", f"run_dir={run_dir}", f"model.over_encoding.m={table_m(table_bytes)}",
            "eval.every=0", "eval.at_end=false", "log.tensorboard=false", "checkpoint.every=0",
            "checkpoint.save_at_end=false", "train.max_steps=1", "train.micro_batch_size=1"]


def measure_startup(overrides: list[str], model_factory=None) -> dict:
    """build_trainer in this (already distributed) process; memory in bytes, time in seconds."""
    import deepspeed  # noqa: F401  (imports before the baseline: they are not start-up memory)

    from pipeline.config.run import load_run_config
    from pipeline.train.build import build_trainer
    cfg = load_run_config("configs/run/tiny-cpu.yaml", overrides)
    if cfg.parallel.tp > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import megatron.core.parallel_state  # noqa: F401
    gc.collect()
    base = memory_status()["VmRSS"]
    reset_peak()
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, model_factory=model_factory)
    seconds = time.perf_counter() - t0
    gc.collect()
    now = memory_status()
    table = next(p.param for p in trainer.external.params if p.kind == "oe_table")   # outside DeepSpeed
    full_rows = sum(trainer.engine.module.over_encoding.table_rows)
    return {"base": base, "peak": now["VmHWM"], "steady": now["VmRSS"], "seconds": seconds,
            "table_bytes": table.numel() * table.element_size(), "table_rows": int(table.shape[0]),
            "full_rows": full_rows,
            "full_table_bytes": full_rows * table.shape[1] * table.element_size()}


def _rank(rank: int, world: int, port: int, out, overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    torch.set_num_threads(1)
    out.put((rank, measure_startup(overrides)))


def run_world(world: int, overrides: list[str]) -> list[dict]:
    return spawn_ranks(_rank, world, (overrides,), timeout=1800)


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0], help="OE table sizes (fp32)")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    record = {"bench": "startup_memory", "args": vars(args), "runs": []}
    print(f"{'world':>5} {'table GiB':>9} {'rank table MiB':>14} {'base MiB':>8} {'peak MiB':>8} "
          f"{'steady MiB':>10} {'peak-steady':>11} {'peak-base-table':>15} {'start-up s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        shards = str(write_shards(Path(tmp) / "shards"))
        for world in args.worlds:
            for gib in args.gib:
                load0 = load_average()
                ranks = run_world(world, run_overrides(shards, f"{tmp}/run-{world}-{gib}", gib * 2**30))
                record["runs"].append({"world": world, "gib": gib, "ranks": ranks, "load": [load0, load_average()]})
                for r in ranks:
                    print(f"{world:>5} {r['full_table_bytes'] / 2**30:>9.2f} {r['table_bytes'] / MIB:>14.0f} "
                          f"{r['base'] / MIB:>8.0f} {r['peak'] / MIB:>8.0f} {r['steady'] / MIB:>10.0f} "
                          f"{(r['peak'] - r['steady']) / MIB:>11.0f} "
                          f"{(r['peak'] - r['base'] - r['table_bytes']) / MIB:>15.0f} {r['seconds']:>10.1f}",
                          flush=True)
    write_json(args.json, record)


if __name__ == "__main__":
    main()
