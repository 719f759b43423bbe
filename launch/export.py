"""Export a checkpoint: `python launch/export.py --checkpoint runs/demo --out exports/demo [--format ...]`.

--checkpoint: a run folder (latest checkpoint), its checkpoints/ folder, one step_N folder, or an export.
--format consolidated (default): model.safetensors + config.yaml + export.json, loadable on one CPU process
    with pipeline.export.load.load_model (any model, incl. Over-Encoding tables and MTP heads).
--format hf: a folder transformers.AutoModelForCausalLM.from_pretrained loads (any model): transformers'
    OlmoeForCausalLM when it holds the model, else the over_tokenized_olmoe remote code shipped in the folder
    (trust_remote_code=True); with the tokenizer (AutoTokenizer), generation_config.json and a README.md
    model card. --drop-od-heads leaves MTP / product heads out; --eval-json adds launch/eval.py results to
    the card. See docs/evaluation.md.
Errors (not a checkpoint, a bad config, an unexportable model or tokenizer, an existing --out) end with one
line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--format", choices=["consolidated", "hf"], default="consolidated")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--tokenizer", help="hf: the trained tokenizer (.model / .json) when the recorded one is not found")
    p.add_argument("--no-tokenizer", action="store_true", help="hf: export the weights without a tokenizer")
    p.add_argument("--drop-od-heads", action="store_true", help="hf: leave the MTP / product heads out")
    p.add_argument("--eval-json", help="hf: a launch/eval.py --out file whose numbers go into the model card")
    args = p.parse_args(argv)
    hf_only = [f for f, v in (("--tokenizer", args.tokenizer), ("--no-tokenizer", args.no_tokenizer),
                              ("--drop-od-heads", args.drop_od_heads), ("--eval-json", args.eval_json)) if v]
    if hf_only and args.format != "hf":
        p.error(f"{hf_only[0]} applies to --format hf only")
    if args.tokenizer and args.no_tokenizer:
        p.error("--tokenizer and --no-tokenizer exclude each other")
    return args


def export_hf(args, state, cfg, meta, dtype):
    from pipeline.data.tokenizer import TokenizerError, load_tokenizer
    from pipeline.export.hf_export import save_hf
    from pipeline.export.model_card import training_record

    tok = None
    if not args.no_tokenizer:
        try:
            tok = load_tokenizer(args.tokenizer, meta.get("tokenizer"), cfg.vocab_size)
        except TokenizerError as e:
            raise TokenizerError(f"{e} (or --no-tokenizer to export the weights alone)") from None
    special = {"eos_token_id": (meta.get("tokenizer") or {}).get("eos_id")}
    return save_hf(args.out, state, cfg, meta, tokenizer=tok, drop_od_heads=args.drop_od_heads, dtype=dtype,
                   overwrite=args.overwrite, special_ids=special, record=training_record(meta, args.eval_json))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from pipeline.data.tokenizer import TokenizerError
    from pipeline.export.checkpoint_reader import CheckpointError
    from pipeline.export.consolidate import save_consolidated
    from pipeline.export.hf_olmoe import ExportError
    from pipeline.export.hf_tokenizer import TokenizerExportError
    from pipeline.export.load import load_state

    try:
        state, cfg, meta = load_state(args.checkpoint)
        dtype = DTYPES[args.dtype]
        if args.format == "consolidated":
            out = save_consolidated(args.out, state, cfg, meta, dtype, args.overwrite)
        else:
            out = export_hf(args, state, cfg, meta, dtype)
    except (CheckpointError, ExportError, TokenizerError, TokenizerExportError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = meta.get("tokenizer") or {}
    if args.format == "consolidated" and (not tok.get("path") or not os.path.isfile(tok["path"])):
        # the export still works; eval / generate of it will then need --tokenizer
        why = tok.get("problem") or tok.get("path") or "no tokenizer record reachable from the run's data.path"
        print(f"warning: {meta.get('source')}: tokenizer not found ({why}); pass --tokenizer to eval / generate "
              "of the export", file=sys.stderr)
    print(f"exported {meta.get('source')} (step {meta.get('step')}, {sum(v.numel() for v in state.values()):,} "
          f"parameters) -> {out} [{args.format}, {args.dtype}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
