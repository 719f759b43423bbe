"""Peer benchmark 4: generation tokens/s with a KV cache, our generator (pipeline/generate/generator.py) vs
transformers' generate() (DynamicCache) on the same non-OE model (weights through our exporter, logits
checked equal first), greedy, the same left-unpadded prompts, CPU fp32, one thread.

Each call generates --new-tokens tokens for --gen-batch prompts of --prompt-len tokens (prefill included, no
early stop: no EOS id); tokens/s = batch x new tokens / process CPU seconds (median of interleaved calls).
The share of generated tokens on which both agree is printed as a check (greedy: equal up to near-ties).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.timing import interleaved, load_average, median, spread


def run_size(size: str, args) -> dict:
    import torch

    from bench.peers_hf import build_ours, check_same_logits, load_hf, model_config, random_batch
    from pipeline.generate.generator import generate

    cfg = model_config(size)
    ours = build_ours(cfg)
    with tempfile.TemporaryDirectory(prefix="peers_gen_") as tmp:
        hf = load_hf(ours, Path(tmp) / "hf")
    prompts = random_batch(cfg, args.gen_batch, args.prompt_len, seed=1)
    rel = check_same_logits(ours, hf, prompts)
    ours.eval(), hf.eval()
    n = args.new_tokens
    out: dict[str, list[list[int]]] = {}

    def run_ours() -> None:
        out["ours"] = generate(ours, prompts.tolist(), n, eos_id=None).tokens

    @torch.no_grad()
    def run_hf() -> None:
        ids = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        out["hf"] = ids[:, prompts.shape[1]:].tolist()

    load0 = load_average()
    wall, cpu = interleaved({"hf": run_hf, "ours": run_ours}, args.reps, warmup=1)
    load1 = load_average()
    tokens = args.gen_batch * n
    agree = sum(a == b for ra, rb in zip(out["ours"], out["hf"]) for a, b in zip(ra, rb)) / tokens
    rows = {name: {"tokens_per_s_cpu": tokens / median(cpu[name]), "tokens_per_s_wall": tokens / median(wall[name]),
                   "cpu_spread": spread(cpu[name])} for name in ("hf", "ours")}
    ratio = rows["ours"]["tokens_per_s_cpu"] / rows["hf"]["tokens_per_s_cpu"]
    print(f"\n[4 generation, {size}] batch {args.gen_batch}, prompt {args.prompt_len}, {n} new tokens, greedy, "
          f"KV cache, 1 thread, {args.reps} interleaved reps, logits rel diff {rel:.1e}, tokens agreeing "
          f"{agree:.3f}, load avg {load0:.1f} -> {load1:.1f}")
    print(f"{'variant':<8}{'tok/s (CPU)':>13}{'spread':>8}{'tok/s (wall)':>14}")
    for name, r in rows.items():
        print(f"{name:<8}{r['tokens_per_s_cpu']:>13.1f}{r['cpu_spread']:>8.2f}{r['tokens_per_s_wall']:>14.1f}")
    print(f"ours / hf tokens per CPU-second: {ratio:.3f}")
    return {"batch": args.gen_batch, "prompt_len": args.prompt_len, "new_tokens": n, "agree": agree,
            "load": [load0, load1], "variants": rows, "ours_over_hf": ratio}


def add_args(ap) -> None:
    ap.add_argument("--gen-sizes", nargs="+", default=["d128", "d512"], help="[%(default)s]")
    ap.add_argument("--gen-batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)


def run(args) -> dict:
    return {size: run_size(size, args) for size in args.gen_sizes}
