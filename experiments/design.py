"""The mechanism behind the experiments' scale: how often a run sees each OE table row.

    python -m experiments.design [--smoke]
OE learns one vector per hashed n-gram, so its gain needs each row to be looked up many times within the token
budget. For each scale (experiments/configs/shakespeare_v1024.yaml, and the earlier shakespeare_v8192.yaml)
this counts, in the first T training tokens of its shards (T = steps x batch x sequence length, the budget of
one run), the distinct 2- and 3-grams, their mean sightings, the share of tokens whose n-gram is seen >= 5
times, and the sightings per row of the main table (T / min(m, distinct n-grams)). Writes <results>/design.json.
"""
from __future__ import annotations

import numpy as np
import yaml

from experiments.common import parse_args, write_results
from experiments.train_runs import BASE_CONFIG, ROOT, V8192_CONFIG

MAIN_M = {BASE_CONFIG.name: 65521, V8192_CONFIG.name: 65537}


def training_tokens(shards, limit: int) -> np.ndarray:
    """The first `limit` tokens of the train shards, in shard order, as int64."""
    from pipeline.data.manifest import load_manifest
    manifest = load_manifest(shards, verify="none")
    parts, have = [], 0
    for shard in manifest.split_shards("train"):
        arr = np.fromfile(shards / shard.bin, dtype=np.dtype(manifest.dtype)).astype(np.int64)
        parts.append(arr[:limit - have])
        have += parts[-1].size
        if have >= limit:
            break
    return np.concatenate(parts)


def ngram_stats(tokens: np.ndarray, vocab: int, n: int) -> dict:
    ids = tokens[n - 1:].copy()
    for j in range(1, n):                                  # exact ids: vocab^n < 2^63 for these vocabularies
        ids += tokens[n - 1 - j: tokens.size - j] * vocab ** j
    _, counts = np.unique(ids, return_counts=True)
    return {"distinct": int(counts.size), "mean_sightings": round(float(counts.mean()), 2),
            "tokens_in_ngrams_seen_5x": round(float(counts[counts >= 5].sum() / counts.sum()), 3)}


def scale(config) -> dict:
    cfg = yaml.safe_load(config.read_text())
    budget = cfg["train"]["max_steps"] * cfg["train"]["global_batch_size"] * cfg["data"]["seq_len"]
    vocab, m = cfg["model"]["vocab_size"], MAIN_M[config.name]
    tokens = training_tokens(ROOT / cfg["data"]["path"], budget)
    grams = {f"{n}gram": ngram_stats(tokens, vocab, n) for n in (2, 3)}
    return {"config": config.name, "vocab": vocab, "steps": cfg["train"]["max_steps"], "tokens": int(tokens.size),
            "main_m": m, **grams,
            "sightings_per_row": {k: round(tokens.size / min(m, g["distinct"]), 1) for k, g in grams.items()}}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows = [scale(c) for c in (BASE_CONFIG, V8192_CONFIG)]
    flat = [{"config": r["config"], "vocab": r["vocab"], "tokens": r["tokens"], "main_m": r["main_m"],
             **{f"{k}_{f}": v for k in ("2gram", "3gram") for f, v in r[k].items()},
             **{f"{k}_sightings_per_row": v for k, v in r["sightings_per_row"].items()}} for r in rows]
    write_results(args.out, "design", {"experiment": "design", "command": "python -m experiments.design",
                                       "rows": rows}, flat)
    for r in flat:
        print(r)


if __name__ == "__main__":
    main()
