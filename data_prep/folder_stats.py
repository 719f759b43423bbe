"""`python -m data_prep stats OUT... [--config RUN.yaml [key=value ...]]`: what prepared folders hold and, for a
run config, what its data mixture will make of them.

Per folder: documents, tokens and shards per split, and the tokenizer (from manifest.json alone, nothing else
is read). With --config: per source of data.sources (or data.path), its weight and share, its sequences per
epoch at data.seq_len, the sequences train.max_steps x global batch draws from it (pipeline/data/mixture.py,
the rule training uses) and so the epochs it will see, against its max_repetition.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data.manifest import read_manifest


def _count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def folder_lines(folder: str | Path) -> list[str]:
    m = read_manifest(folder)
    lines = [f"{folder}: tokenizer {m.tokenizer.path} (vocab {m.tokenizer.vocab_size}, sha256 "
             f"{m.tokenizer.sha256[:12]}…), dtype {m.dtype}"]
    for split, t in sorted(m.totals.items(), key=lambda kv: kv[0] == "all"):   # "all" (the sum) last
        shards = len(m.split_shards(split)) if split != "all" else len(m.shards)
        lines.append(f"  {split:<6} {_count(t['documents']):>8} documents {_count(t['tokens']):>8} tokens "
                     f"in {shards} shard{'s' * (shards != 1)}")
    return lines


def mixture_lines(cfg) -> list[str]:
    from pipeline.data.mixture import Blend

    sources = cfg.data.source_list()
    total = cfg.train.max_steps * cfg.train.global_batch_size
    blend = Blend([s.weight for s in sources])
    drawn = blend.counts(total)
    lines = [f"run: train.max_steps {cfg.train.max_steps} x global batch {cfg.train.global_batch_size} = "
             f"{_count(total)} sequences of {cfg.data.seq_len} tokens ({_count(total * cfg.data.seq_len)} tokens)",
             f"  {'source':<16} {'weight':>7} {'share':>6} {'tokens':>8} {'seq/epoch':>9} {'drawn':>8} "
             f"{'epochs':>7}  max_repetition"]
    for src, share, n in zip(sources, blend.weights, drawn):
        tokens = read_manifest(src.path).totals.get(cfg.data.train_split, {}).get("tokens", 0)
        per_epoch = max(0, (tokens - 1) // cfg.data.seq_len)
        epochs = int(n) / per_epoch if per_epoch else float("inf")
        limit = "-" if src.max_repetition is None else (
            f"{src.max_repetition:g} " + ("ok" if epochs <= src.max_repetition else "EXCEEDED: training refuses this"))
        lines.append(f"  {src.name:<16} {src.weight:>7g} {share:>6.3f} {_count(tokens):>8} {_count(per_epoch):>9} "
                     f"{_count(int(n)):>8} {epochs:>7.2f}  {limit}")
    return lines


def run_stats(folders: list[str], config: str | None, overrides: list[str], out=print) -> None:
    for folder in folders:
        for line in folder_lines(folder):
            out(line)
    if config is not None:
        from pipeline.config.run import load_run_config
        for line in mixture_lines(load_run_config(config, overrides)):
            out(line)
