"""Export a checkpoint: `python launch/export.py --checkpoint runs/demo --out exports/demo [--format ...]`.

--checkpoint: a run folder (latest checkpoint), its checkpoints/ folder, or one step_N folder.
--format consolidated (default): model.safetensors + config.yaml + export.json, loadable on one CPU process
    with pipeline.export.load.load_model (any model, incl. Over-Encoding tables and MTP heads).
--format hf: the transformers OlmoeForCausalLM layout (config.json + model.safetensors), for models without
    Over-Encoding; load with transformers.OlmoeForCausalLM.from_pretrained(out). See docs/evaluation.md.
Errors (not a checkpoint, a bad config, an unexportable model, an existing --out) end with one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--format", choices=["consolidated", "hf"], default="consolidated")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    from pipeline.export.checkpoint_reader import CheckpointError
    from pipeline.export.consolidate import save_consolidated
    from pipeline.export.hf_olmoe import ExportError, save_hf_olmoe
    from pipeline.export.load import load_state

    try:
        state, cfg, meta = load_state(args.checkpoint)
        dtype = DTYPES[args.dtype]
        if args.format == "consolidated":
            out = save_consolidated(args.out, state, cfg, meta, dtype, args.overwrite)
        else:
            tok = meta.get("tokenizer") or {}
            out = save_hf_olmoe(args.out, state, cfg, meta, eos_id=tok.get("eos_id"), dtype=dtype,
                                overwrite=args.overwrite)
    except (CheckpointError, ExportError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = meta.get("tokenizer") or {}
    if not tok.get("path") or not os.path.isfile(tok["path"]):
        # the export still works; eval / generate of it will then need --tokenizer
        why = tok.get("problem") or tok.get("path") or "no tokenizer record reachable from the run's data.path"
        print(f"warning: {meta.get('source')}: tokenizer not found ({why}); pass --tokenizer to eval / generate "
              "of the export", file=sys.stderr)
    print(f"exported {meta.get('source')} (step {meta.get('step')}, {sum(v.numel() for v in state.values()):,} "
          f"parameters) -> {out} [{args.format}, {args.dtype}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
