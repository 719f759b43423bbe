"""Peer benchmark 3: `python -m data_prep shard` vs the pipeline users write by hand, and P3 at one worker.

Hand-written pipeline (what the HF + Megatron tutorials do), as its own process:
    ds = datasets.load_dataset("json", data_files=JSONL)["train"]
    ds = ds.map(tokenize, batched=True, num_proc=N)       # PreTrainedTokenizerFast(batch["text"]) + EOS
    IndexedDatasetBuilder(.bin, uint16).add_document(ids, [len(ids)]) per document; finalize(.idx)
against `python -m data_prep shard JSONL -t TOK --workers N` (train/val split by hash, checksummed shards,
manifest), same JSONL, same tokenizer file (the OLMoE tokenizer), same N. Both as a user runs them: wall time
from launch to exit, CPU time of the process tree, peak RSS of the tree (sampled every 20 ms). The datasets
cache goes to a fresh temporary folder, so its Arrow conversion is part of the run (a first run). Token counts
(EOS excluded) are checked equal. Corpus: k copies of the embedded Shakespeare corpus, paragraphs as documents
(bench/data_prep_throughput.py).

P3 (docs/performance.md): shard with ONE worker vs the tokenizer library's raw batch encode
(encode_batch_fast, 2048 documents a call) of the same documents preloaded in memory, both in this process
and interleaved (raw, shard, shard of one play, ...), process CPU time and wall time, medians. The run on one
play is subtracted from the full run, which removes what a shard run costs besides its tokens (tokenizer
load, output folder, manifest): the ratio is the steady throughput including reading, UTF-8 checks, split
hashing, chunking, token arrays, shard writing and checksums. Separate processes (the previous method, in
bench/data_prep_throughput.py) put interpreter start-up and foreign load into one side only, and moved the
ratio by +-0.1 between runs on this machine.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.data_prep_throughput import CORPUS, OLMOE, SHARD_TOKENS, build_corpus, documents, run_measured


def hand_pipeline(jsonl: str, tok_path: str, out_prefix: str, workers: int, cache_dir: str) -> None:
    """The hand-written datasets.map + IndexedDatasetBuilder pipeline (run as a child process)."""
    import numpy as np
    from datasets import load_dataset
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=tok_path)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"], add_special_tokens=False)["input_ids"]]}

    ds = load_dataset("json", data_files=jsonl, split="train", cache_dir=cache_dir)
    ds = ds.map(tokenize, batched=True, num_proc=workers if workers > 1 else None, remove_columns=ds.column_names)
    builder = IndexedDatasetBuilder(out_prefix + ".bin", dtype=np.uint16)
    for batch in ds.iter(batch_size=1000):
        for ids in batch["input_ids"]:
            builder.add_document(ids, [len(ids)])
    builder.finalize(out_prefix + ".idx")


def _hand_tokens(out_prefix: str) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    ds = IndexedDataset(out_prefix)
    return int(ds.sequence_lengths.sum()) - len(ds.sequence_lengths)      # EOS excluded


def _ours_tokens(folder: Path) -> int:
    from pipeline.data.manifest import load_manifest
    m = load_manifest(folder, verify="none")
    return m.totals["all"]["tokens"] - m.totals["all"]["documents"]


def _raw_encoder(tok_path: str):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    return lambda batch: [e.ids for e in tok.encode_batch_fast(batch, add_special_tokens=False)]


def _raw_encode(encode, texts: list[str]) -> None:
    for i in range(0, len(texts), 2048):
        encode(texts[i:i + 2048])


def _shard_in_process(inputs: Path, out: Path) -> None:
    from data_prep.config import ShardConfig
    from data_prep.shard import run_shard
    run_shard(ShardConfig(inputs=[str(inputs)], output=str(out), tokenizer=str(OLMOE), doc_split="blank-lines",
                          workers=1, progress=False, overwrite=True, shard_tokens=SHARD_TOKENS), log=lambda *a: None)


def _timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn()."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _jsonl(folder: Path, path: Path) -> list[str]:
    texts = documents(folder, "blank-lines")
    with path.open("w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return texts


def run(args) -> dict:
    if not CORPUS.is_dir() or not OLMOE.is_file():
        raise SystemExit("assets missing: run `bash scripts/setup.sh` first")
    tok, n = str(OLMOE), args.data_workers
    runs: dict[str, list] = {"ours": [], "hand": [], "raw1": [], "ours1": [], "ours1_tiny": []}
    with tempfile.TemporaryDirectory(prefix="peers_data_") as tmp:
        tmp = Path(tmp)
        folder = build_corpus(tmp, args.data_scale)
        jsonl = tmp / "corpus.jsonl"
        _jsonl(folder, jsonl)
        tiny = tmp / "tiny"            # one play: what a shard run costs besides its tokens
        tiny.mkdir()
        shutil.copy(sorted(p for p in CORPUS.iterdir() if p.is_file())[0], tiny)
        for r in range(args.data_repeat):              # interleaved: shard, hand, shard, hand, ...
            out = tmp / "ours"
            runs["ours"].append(run_measured([sys.executable, "-m", "data_prep", "shard", str(jsonl), "-t", tok,
                                              "-o", str(out), "--workers", str(n), "--no-progress", "--overwrite",
                                              "--shard-tokens", str(SHARD_TOKENS)], "shard"))
            tokens = _ours_tokens(out)
            prefix, cache = str(tmp / f"hand{r}"), tmp / f"hf_cache{r}"
            runs["hand"].append(run_measured([sys.executable, "-m", "bench.peers_data", jsonl.as_posix(), tok,
                                              prefix, str(n), str(cache)], "hand pipeline"))
            shutil.rmtree(cache, ignore_errors=True)
            if _hand_tokens(prefix) != tokens:
                raise AssertionError(f"token counts differ: shard {tokens:,}, hand {_hand_tokens(prefix):,}")
        shutil.rmtree(folder)
        folder = tmp / "p3"            # short runs, many of them: foreign load on the shared core moves CPU time
        folder.mkdir()                 # by up to 50 % from one 10 s run to the next (hyperthread contention)
        plays = sorted(p for p in CORPUS.iterdir() if p.is_file())
        for play in plays[::max(1, len(plays) // args.p3_files)][:args.p3_files]:
            shutil.copy(play, folder)
        texts = documents(folder, "blank-lines")
        encoder = _raw_encoder(tok)
        for r in range(args.p3_repeat):                # interleaved: raw, shard, shard of one play, ...
            runs["raw1"].append(_timed(lambda: _raw_encode(encoder, texts)))
            runs["ours1"].append(_timed(lambda: _shard_in_process(folder, tmp / "ours1")))
            runs["ours1_tiny"].append(_timed(lambda: _shard_in_process(tiny, tmp / "ours1_tiny")))
        p3_tokens, tiny_tokens = _ours_tokens(tmp / "ours1"), _ours_tokens(tmp / "ours1_tiny")
    med = {k: [statistics.median(x[i] for x in v) for i in range(len(v[0]))] for k, v in runs.items()}
    return _report(med, runs, tokens, p3_tokens, tiny_tokens, args)


def _report(med: dict, runs: dict, tokens: int, p3_tokens: int, tiny_tokens: int, args) -> dict:
    mib = 1 << 20
    (ours_wall, ours_cpu), (hand_wall, hand_cpu) = med["ours"][:2], med["hand"][:2]
    ours_rss, hand_rss = max(x[2] for x in runs["ours"]), max(x[2] for x in runs["hand"])
    peer = {"tokens": tokens, "ours_wall": ours_wall, "ours_cpu": ours_cpu, "ours_rss": ours_rss,
            "hand_wall": hand_wall, "hand_cpu": hand_cpu, "hand_rss": hand_rss,
            "ratio_wall": hand_wall / ours_wall, "ratio_cpu": hand_cpu / ours_cpu, "rss_ratio": ours_rss / hand_rss}
    print(f"\n[3 data prep] {args.data_scale}x Shakespeare paragraphs as JSONL ({tokens:,} tokens), OLMoE "
          f"tokenizer, {args.data_workers} worker process(es) on both sides, median of {args.data_repeat}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<38}{'tok/s (wall)':>13}{'wall s':>8}{'CPU s':>8}{'peak RSS':>12}")
    for name, wall, cpu, rss in (("data_prep shard", ours_wall, ours_cpu, ours_rss),
                                 ("datasets.map + IndexedDatasetBuilder", hand_wall, hand_cpu, hand_rss)):
        print(f"{name:<38}{tokens / wall:>13,.0f}{wall:>8.1f}{cpu:>8.1f}{rss / mib:>8.0f} MiB")
    print(f"shard / hand: tokens per wall second {peer['ratio_wall']:.2f}, per CPU-second {peer['ratio_cpu']:.2f}; "
          f"peak RSS {peer['rss_ratio']:.2f}")
    extra = p3_tokens - tiny_tokens
    rate = {k: extra / (med["ours1"][i] - med["ours1_tiny"][i]) for i, k in enumerate(("wall", "cpu"))}
    raw = {k: p3_tokens / med["raw1"][i] for i, k in enumerate(("wall", "cpu"))}
    p3 = {"tokens": p3_tokens, "tiny_tokens": tiny_tokens, "ratio_wall": rate["wall"] / raw["wall"],
          "ratio_cpu": rate["cpu"] / raw["cpu"], "shard_tokens_per_cpu_s": rate["cpu"],
          "raw_tokens_per_cpu_s": raw["cpu"], "cpu_s": {k: med[k][1] for k in ("raw1", "ours1", "ours1_tiny")}}
    print(f"P3, {args.p3_files} plays as text ({p3_tokens:,} tokens), 1 worker, in process, median of "
          f"{args.p3_repeat}: shard {rate['cpu']:,.0f} tokens per CPU-second (minus a {tiny_tokens:,}-token "
          f"run) / raw encode {raw['cpu']:,.0f} = {p3['ratio_cpu']:.3f}; per wall second {p3['ratio_wall']:.3f}; "
          "target >= 0.9")
    return {"workers": args.data_workers, "peer": peer, "p3": p3}


def add_args(ap) -> None:
    ap.add_argument("--data-workers", type=int, default=2, help="processes on both sides [%(default)s]")
    ap.add_argument("--data-scale", type=int, default=2, help="copies of the corpus [%(default)s]")
    ap.add_argument("--data-repeat", type=int, default=1, help="interleaved runs of each side (median) [%(default)s]")
    ap.add_argument("--p3-files", type=int, default=20, help="plays in the P3 corpus [%(default)s]")
    ap.add_argument("--p3-repeat", type=int, default=9, help="interleaved P3 runs (median) [%(default)s]")


if __name__ == "__main__":      # child: python -m bench.peers_data JSONL TOKENIZER OUT_PREFIX WORKERS CACHE_DIR
    hand_pipeline(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
