"""MTP speculative decoding vs plain decoding on one model (the demo model by default): acceptance rate and
tokens/s of both, and their ratio, measured in one run.

    DS_ACCELERATOR=cpu .venv/bin/python bench/speculative_decoding.py --checkpoint runs/demo \
        [--max-new-tokens 64] [--reps 5] [--temperature 0] [--json runs/bench/speculative.json]

Two settings: every prompt alone (batch 1, the latency case speculative decoding is for) and all prompts as
one batch. Variants are interleaved and each figure is the median of --reps runs (bench/timing.py); the
greedy speculative tokens are checked to equal the plain ones.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench.timing import interleaved, load_average, median, spread, write_json

PROMPTS = ["To be, or not to be", "ROMEO:", "Friends, Romans, countrymen, lend me your ears",
           "Now is the winter of our discontent", "All the world's a stage", "KING HENRY IV:",
           "The quality of mercy is not strain'd", "O, what a rogue and peasant slave am I"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/demo")
    p.add_argument("--tokenizer", help="override the recorded tokenizer")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = own work)")
    p.add_argument("--json", help="also write the JSON record here")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.export.load import load_model
    from pipeline.generate.generator import generate
    from pipeline.generate.sampling import SamplingConfig
    from pipeline.generate.speculative import generate_speculative

    torch.set_num_threads(args.threads)
    model, cfg, meta = load_model(args.checkpoint)
    if not model.mtp:
        print(f"error: --checkpoint {args.checkpoint}: the model has no MTP modules to draft with", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.tokenizer, meta.get("tokenizer"), cfg.vocab_size)
    ids = tok.encode_batch(PROMPTS)
    sampling = SamplingConfig(args.temperature)
    n = args.max_new_tokens
    results: dict[str, list] = {}

    def plain_b1() -> None:
        results["plain_b1"] = [generate(model, [x], n, sampling, eos_id=tok.eos_id).tokens[0] for x in ids]

    def speculative_b1() -> None:
        runs = [generate_speculative(model, [x], n, sampling, eos_id=tok.eos_id) for x in ids]
        results["speculative_b1"] = [r.tokens[0] for r in runs]
        results["stats"] = [sum(getattr(r, key) for r in runs) for key in ("drafted", "accepted", "verify_passes")]

    def plain_batch() -> None:
        results["plain_batch"] = generate(model, ids, n, sampling, eos_id=tok.eos_id).tokens

    def speculative_batch() -> None:
        results["speculative_batch"] = generate_speculative(model, ids, n, sampling, eos_id=tok.eos_id).tokens

    load0 = load_average()
    wall, cpu = interleaved({"plain_b1": plain_b1, "speculative_b1": speculative_b1, "plain_batch": plain_batch,
                             "speculative_batch": speculative_batch}, reps=args.reps)
    drafted, accepted, passes = results["stats"]
    tokens = {name: sum(map(len, results[name])) for name in wall}
    identical = results["speculative_b1"] == results["plain_b1"] == results["speculative_batch"]
    print(f"model {args.checkpoint}: {cfg.name}, MTP depth {len(model.mtp)}, OE "
          f"{'on' if cfg.over_encoding.enabled else 'off'}; {len(PROMPTS)} prompts x {n} new tokens, "
          f"temperature {args.temperature}, {args.threads} thread(s); load {load0:.1f} -> {load_average():.1f}")
    print(f"acceptance {accepted}/{drafted} = {accepted / max(1, drafted):.1%} (batch 1); "
          f"{tokens['speculative_b1'] / max(1, passes + len(PROMPTS)):.2f} tokens per trunk pass; "
          f"greedy tokens identical to plain: {identical if args.temperature == 0 else 'n/a (sampling)'}")
    record = {"checkpoint": args.checkpoint, "acceptance_rate": accepted / max(1, drafted), "drafted": drafted,
              "accepted": accepted, "verify_passes": passes, "identical": identical,
              "temperature": args.temperature, "max_new_tokens": n, "prompts": len(PROMPTS)}
    print(f"{'variant':<18} {'tokens':>6} {'wall tok/s':>10} {'cpu tok/s':>10} {'spread':>7}")
    for name in wall:
        tps_wall, tps_cpu = tokens[name] / median(wall[name]), tokens[name] / median(cpu[name])
        record[f"{name}_tok_s"], record[f"{name}_cpu_tok_s"] = tps_wall, tps_cpu
        print(f"{name:<18} {tokens[name]:>6} {tps_wall:>10.1f} {tps_cpu:>10.1f} {spread(wall[name]):>6.0%}")
    for size in ("b1", "batch"):
        for clock in ("", "_cpu"):
            record[f"speedup_{size}{clock}"] = (record[f"speculative_{size}{clock}_tok_s"]
                                                / record[f"plain_{size}{clock}_tok_s"])
        print(f"speculative / plain, {'batch 1' if size == 'b1' else f'batch {len(PROMPTS)}'}: "
              f"{record[f'speedup_{size}']:.2f}x wall, {record[f'speedup_{size}_cpu']:.2f}x CPU time")
    write_json(args.json, record)
    if args.temperature == 0 and not identical:
        print("error: greedy speculative tokens differ from plain greedy tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
