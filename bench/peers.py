"""Performance against peers, side by side (issue 18): one command, ratios from variants measured in the same
run, interleaved, medians (bench/timing.py); CPU, one intra-op thread, process CPU time as the figure.

  --train     training step of our OLMoE vs transformers' OlmoeForCausalLM, same shape / weights / batch
              (bench/peers_train.py; target ours / HF <= 0.8)
  --oe        the Over-Encoding embedding vs a literal Alg. 1 (k(n-1) nn.Embedding + nn.Linear, int64 ids) at
              m = 1M, n = 3, k = 4: time and memory (bench/peers_oe.py; target <= 0.5)
  --data      `python -m data_prep shard` vs datasets.map(tokenize, num_proc=N) + megatron-core's
              IndexedDatasetBuilder over the same JSONL (target >= 1.5), and shard vs raw encode at one worker
              (target >= 0.9) (bench/peers_data.py)
  --generate  generation tokens/s with KV cache vs HF generate() on the same model (bench/peers_generate.py)
No section flag: all four (about 15 minutes on a loaded 2-core machine). Prints one table per section, a
summary of the ratios against their targets and a `JSON {...}` line (also --json PATH).

    DS_ACCELERATOR=cpu .venv/bin/python bench/peers.py [--train] [--oe] [--data] [--generate] [--reps 5]
        [--json runs/bench/peers.json]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `python bench/peers.py` from the repo root
# before torch loads (the sections import it): spinning OpenMP barriers stall under foreign load, and one
# thread per tokenizer process on both sides of the data-prep comparison
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import peers_data, peers_generate, peers_oe, peers_train   # noqa: E402
from bench.timing import load_average, write_json                   # noqa: E402

SECTIONS = {"train": peers_train, "oe": peers_oe, "data": peers_data, "generate": peers_generate}


def summary(record: dict) -> list[tuple[str, float | None, str]]:
    """(what, measured ratio, target) for every headline ratio the sections produced."""
    lines = []
    for size, r in record.get("train", {}).items():
        for name in ("ours", "ours+compile"):
            v = r["variants"].get(name)
            if v:
                lines.append((f"train step {size}: {name} / hf (CPU time)", v["over_hf"], "<= 0.8"))
    oe = record.get("oe")
    if oe:
        r = oe["ratios"]
        lines += [("OE step: ours (row_sparse_adam) / literal Alg. 1 (AdamW)", r["best_over_literal"], "<= 0.5"),
                  ("OE step: ours / literal, both AdamW", r["dense_over_literal_dense"], "<= 0.5"),
                  ("OE step: ours (row_sparse_adam) / literal (SparseAdam)", r["sparse_over_literal_sparse"], "<= 0.5"),
                  ("OE peak RSS: ours (row_sparse_adam) / literal (AdamW)", r["memory_best_over_literal"], "-"),
                  ("OE peak RSS: ours / literal, both AdamW", r["memory_dense_over_literal_dense"], "-")]
    data = record.get("data")
    if data:
        lines.append(("data prep: shard / datasets.map+IndexedDatasetBuilder (tokens/s, wall)",
                      data["peer"]["ratio_wall"], ">= 1.5"))
        lines.append(("data prep, 1 worker: shard / raw encode (steady, per CPU-second)",
                      data["p3"]["ratio_cpu"], ">= 0.9"))
        lines.append(("data prep, 1 worker: shard / raw encode (steady, wall)", data["p3"]["ratio_wall"], ">= 0.9"))
    gen = record.get("generate")
    if gen:
        for size, r in gen.items():
            lines.append((f"generation {size}: ours / hf tokens/s (CPU time)", r["ours_over_hf"], "-"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SECTIONS:
        ap.add_argument(f"--{name}", action="store_true", help=f"run section {name}")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per variant [%(default)s]")
    ap.add_argument("--json", default=None)
    for module in SECTIONS.values():
        module.add_args(ap)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    chosen = [name for name in SECTIONS if getattr(args, name)] or list(SECTIONS)
    load0 = load_average()
    record = {"bench": "peers", "sections": chosen, "reps": args.reps}
    for name in chosen:
        record[name] = SECTIONS[name].run(args)
    record["load"] = [load0, load_average()]
    print(f"\nSummary (load average {load0:.1f} -> {record['load'][1]:.1f})")
    for what, value, target in summary(record):
        shown = f"{value:.3f}" if value is not None else "-"
        print(f"  {what:<72}{shown:>8}   target {target}")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
