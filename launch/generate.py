"""Sample from a model: `python launch/generate.py --checkpoint runs/demo --prompt "To be" [options]`.

--checkpoint: an export folder (launch/export.py) or a run / checkpoints / step_N folder.
Decoding uses a KV cache and the Over-Encoding n-gram id cache (one OE lookup per table per new token);
--no-cache recomputes the whole prefix every step (reference path, slow). Greedy by default
(--temperature 0); --temperature T with optional --top-k K and --top-p P samples. --speculative mtp drafts
with the model's MTP-DS modules and verifies with the trunk (pipeline/generate/speculative.py): the same
greedy tokens, the same sampling distribution, fewer trunk passes.
The tokenizer is the one recorded in the training data manifest, or --tokenizer (.model / .json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def check_args(args) -> None:
    """Values that cannot mean anything, refused before a model is loaded (one line each). top-k / top-p
    only shape sampling: with the greedy default they would be ignored without a word."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:        # also NaN
        raise ValueError(f"--temperature: must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k: must be >= 0 (0 = all tokens), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.temperature == 0 and (args.top_k or args.top_p < 1):
        raise ValueError("--top-k / --top-p apply only when sampling: add --temperature T > 0 (0 is greedy)")
    if args.speculative and args.no_cache:
        raise ValueError("--speculative mtp verifies drafts against the KV cache: drop --no-cache")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompt", action="append", default=[], help="repeatable; '' starts from EOS")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--tokenizer", help="override the recorded tokenizer (.model or .json)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--speculative", choices=["mtp"], help="draft with the MTP modules, verify with the trunk")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from data_prep.errors import DataPrepError
    from pipeline.export.checkpoint_reader import CheckpointError
    from pipeline.export.load import load_model
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.generate.generator import generate
    from pipeline.generate.sampling import SamplingConfig
    from pipeline.generate.speculative import generate_speculative

    prompts = list(args.prompt)
    try:
        check_args(args)
        if args.prompts_file:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f]
        if not prompts:
            raise ValueError("give --prompt TEXT (repeatable) or --prompts-file FILE")
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
        sampling.validate()
        model, cfg, meta = load_model(args.checkpoint)
        if args.speculative and not model.mtp:
            raise ValueError(f"--speculative mtp: the model has no MTP modules to draft with (over_decoding.mode "
                             f"{cfg.over_decoding.mode!r}, needs 'mtp')")
        tok = load_tokenizer(args.tokenizer, meta.get("tokenizer"), cfg.vocab_size)
        ids = [toks or [tok.eos_id] for toks in tok.encode_batch(prompts)]
        t0 = time.perf_counter()
        if args.speculative:
            result = generate_speculative(model, ids, args.max_new_tokens, sampling, eos_id=tok.eos_id,
                                          seed=args.seed)
        else:
            result = generate(model, ids, args.max_new_tokens, sampling, eos_id=tok.eos_id, seed=args.seed,
                              use_cache=not args.no_cache)
        elapsed = time.perf_counter() - t0
    except (CheckpointError, DataPrepError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, new in zip(prompts, result.tokens):
        text = tok.decode(new)
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": text, "tokens": new}, ensure_ascii=False))
        else:
            print(f"{prompt}{text}\n---")
    n = sum(len(t) for t in result.tokens)
    mode = "no cache" if args.no_cache else "KV + n-gram cache"
    if args.speculative:
        mode += (f", MTP speculative: {result.accepted}/{result.drafted} drafts accepted "
                 f"({result.acceptance_rate:.1%}), {result.verify_passes} verify passes")
    print(f"{n} tokens in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.1f} tok/s, {mode})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
