"""Loader start-up at pretraining scale: resident memory and time per rank, in-memory index vs the cache.

    python -m bench.loader_index [--docs 10M,100M,500M] [--workdir DIR] [--memory-up-to 100M]

For each size it writes a real shard folder of synthetic document lengths (mean ~1,000 tokens, so 100M
documents are ~100B tokens): genuine .idx files, and .bin files that are sparse (no token data on disk, the
right size), plus a manifest. Then, each in a fresh process, as a training rank would at start
(build_loaders with data.verify=size, seq_len 4096, global batch 1024):
  memory   the in-memory index (data.index=memory) and its first global batch;
  build    the cache built by local rank 0 (one-time);
  rank     a rank opening the built cache and reading the index of the first global batch plus 10,000
           random samples (no token reads: the bench has none).
Reported: wall time, peak RSS (VmHWM), and at the end private (anonymous) and file-backed resident memory;
file-backed pages are the page cache, one copy shared by every rank of the node.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEQ_LEN, GLOBAL_BATCH, DOCS_PER_SHARD, VOCAB = 4096, 1024, 2_000_000, 50_280


def parse_count(text: str) -> int:
    scale = {"k": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * scale[text[-1]]) if text[-1] in scale else int(text)


def write_folder(folder: Path, docs: int, seed: int = 0) -> int:
    from pipeline.data.indexed_dataset import encode_index
    from pipeline.data.manifest import Manifest, ShardRecord, TokenizerRecord, shard_name, write_manifest

    if (folder / "manifest.json").is_file():
        return json.loads((folder / "manifest.json").read_text())["totals"]["train"]["tokens"]
    folder.mkdir(parents=True, exist_ok=True)
    rng, records, total = np.random.default_rng(seed), [], 0
    for index, lo in enumerate(range(0, docs, DOCS_PER_SHARD)):
        n = min(DOCS_PER_SHARD, docs - lo)
        lengths = np.clip(rng.lognormal(6.3, 1.0, size=n), 16, 200_000).astype(np.int64)   # mean ~900
        name = shard_name("train", index)
        idx = encode_index(lengths, "uint16")
        (folder / f"{name}.idx").write_bytes(idx)
        tokens = int(lengths.sum())
        with open(folder / f"{name}.bin", "wb") as f:
            f.truncate(tokens * 2)          # sparse: the loader checks the size, this bench reads no tokens
        records.append(ShardRecord("train", index, f"{name}.bin", f"{name}.idx", tokens, n, "0" * 64, "0" * 64,
                                   tokens * 2, len(idx)))
        total += tokens
    tok = TokenizerRecord(path="synthetic", sha256="ab" * 32, kind="test", vocab_size=VOCAB, eos_id=VOCAB - 1)
    write_manifest(folder, Manifest(dtype="uint16", tokenizer=tok, shards=records))
    return total


def status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 2**20   # kB -> GiB
    return out


def run_child(folder: str, mode: str) -> dict:
    from pipeline.config.run import DataConfig
    from pipeline.data.loader import build_loaders

    t0 = time.perf_counter()
    cfg = DataConfig(path=folder, seq_len=SEQ_LEN, val_split=None, verify="size",
                     index="memory" if mode == "memory" else "cache")
    train = build_loaders(cfg, VOCAB, seed=0, global_batch=GLOBAL_BATCH, micro_batch=GLOBAL_BATCH, eval_batches=1,
                          dp_rank=0, dp_size=1, max_steps=1 if mode != "memory" else None)[0]
    seqs = train.sequences.sources[0]
    t_open = time.perf_counter() - t0
    if mode == "build":
        return {"s": t_open, **status()}
    for i in range(GLOBAL_BATCH):          # the first global batch's windows, located (tokens not read)
        seqs.locate(i)
    t_first = time.perf_counter() - t0
    if mode == "rank":
        rng = np.random.default_rng(1)
        for i in rng.integers(0, seqs.samples_per_epoch, size=10_000):
            seqs.locate(int(i))
    return {"s": t_first, "s_open": t_open, **status()}


def measure(folder: Path, mode: str) -> dict:
    env = {**os.environ, "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "bench.loader_index", "--child", str(folder), mode],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} at {folder} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", default="10M,100M,500M")
    p.add_argument("--memory-up-to", default="100M", help="largest size also run with the in-memory index")
    p.add_argument("--workdir", default="/tmp/bench_loader_index")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child)))
        return
    print(f"seq_len {SEQ_LEN}, global batch {GLOBAL_BATCH}; GiB; rss_anon = private memory of the rank, "
          f"rss_file = mapped page cache (shared by the ranks of a node)")
    print(f"{'documents':>10} {'tokens':>8} {'mode':>7} {'time s':>8} {'peak GiB':>9} {'anon GiB':>9} {'file GiB':>9}")
    for text in args.docs.split(","):
        docs = parse_count(text)
        folder = Path(args.workdir) / text
        t0 = time.perf_counter()
        tokens = write_folder(folder, docs)
        print(f"# {text} documents written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        modes = ["build", "rank"] + (["memory"] if docs <= parse_count(args.memory_up_to) else [])
        shutil.rmtree(folder / "index_cache", ignore_errors=True)   # "build" measures a fresh build
        for mode in modes:
            r = measure(folder, mode)
            print(f"{text:>10} {tokens / 1e9:>7.0f}B {mode:>7} {r['s']:>8.1f} {r['VmHWM']:>9.2f} "
                  f"{r['RssAnon']:>9.2f} {r['RssFile']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
