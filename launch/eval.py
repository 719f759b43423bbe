"""Evaluate a model: `python launch/eval.py --checkpoint runs/demo [--limit 20] [--out results.json]`.

--checkpoint: an export folder (launch/export.py) or a run / checkpoints / step_N folder.
Validation loss / perplexity on the validation split of --data (default: the run's data.path) with the
run's seq_len, then the zero-shot tasks (default: the paper's five, whose mean primary accuracy is
"downstream"; --tasks all adds sciq and openbookqa; --tasks none skips them). --limit N scores N questions
per task, evenly spread over the split. Results go to stdout and, with --out, to a JSON file.
Rank-parallel under torchrun / deepspeed / mpirun (gloo on CPU, nccl on GPUs): ranks split the requests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", default="downstream",
                   help="comma list, 'downstream' (the five), 'all', or 'none'")
    p.add_argument("--limit", type=int, default=None, help="questions per task (evenly spread)")
    p.add_argument("--tokenizer", help="override the recorded tokenizer (.model or .json)")
    p.add_argument("--data", help="data_prep folder for validation loss (default: the run's data.path)")
    p.add_argument("--seq-len", type=int, help="validation window (default: the run's data.seq_len)")
    p.add_argument("--val-split", default=None)
    p.add_argument("--val-sequences", type=int, default=None, help="at most this many validation windows")
    p.add_argument("--no-val", action="store_true")
    p.add_argument("--batch-tokens", type=int, default=8192, help="rows x length per forward pass")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_args(args) -> None:
    """Values that cannot mean anything, refused before a model is loaded (one line each)."""
    for flag, value, low in (("--limit", args.limit, 1), ("--seq-len", args.seq_len, 2),
                             ("--val-sequences", args.val_sequences, 1), ("--batch-tokens", args.batch_tokens, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag}: must be >= {low}, got {value}")
    if args.no_val and any(v is not None for v in (args.data, args.seq_len, args.val_split, args.val_sequences)):
        raise ValueError("--no-val skips the validation loss: --data / --seq-len / --val-split / --val-sequences "
                         "would be ignored")


def validation_data(args, meta: dict, model_cfg) -> tuple[str, int, str]:
    """(data folder, seq_len, split) for the validation loss: the flags, else what the run recorded (its
    data.path resolved as pipeline/export/recorded_paths.py says)."""
    data = meta.get("data") or {}
    if args.data is None and data.get("not_found_in"):
        raise ValueError(f"{meta.get('source')}: the run's data.path {data.get('recorded_path')!r} has no "
                         f"manifest.json under {', '.join(data['not_found_in'])}: pass --data (or --no-val)")
    data_path, seq_len = args.data or data.get("path"), args.seq_len or data.get("seq_len")
    if not data_path or not seq_len:
        raise ValueError("validation loss needs --data and --seq-len (not recorded with this model); "
                         "or pass --no-val")
    if int(seq_len) > model_cfg.max_seq_len:
        raise ValueError(f"{'--seq-len' if args.seq_len else 'the recorded data.seq_len'} {seq_len} exceeds the "
                         f"model's max_seq_len {model_cfg.max_seq_len}")
    return data_path, int(seq_len), args.val_split or data.get("val_split") or "val"


def init_process_group() -> None:
    """Join the launcher's process group when there is one (RANK/WORLD_SIZE, or OpenMPI's variables)."""
    from pipeline.train.distributed import populate_env

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        return
    populate_env()
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import torch.distributed as dist

    from data_prep.errors import DataPrepError
    from pipeline.data.atomic_io import atomic_write_bytes
    from pipeline.data.indexed_dataset import ShardError
    from pipeline.eval.downstream import evaluate_tasks
    from pipeline.eval.tasks import DOWNSTREAM_TASKS, TASKS
    from pipeline.eval.val_loss import validation_loss
    from pipeline.export.checkpoint_reader import CheckpointError
    from pipeline.export.load import load_model
    from pipeline.data.tokenizer import load_tokenizer

    init_process_group()
    rank = dist.get_rank() if dist.is_initialized() else 0
    tasks = {"downstream": list(DOWNSTREAM_TASKS), "all": list(TASKS), "none": []}.get(
        args.tasks, [t.strip() for t in args.tasks.split(",") if t.strip()])
    try:
        check_args(args)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"--tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
        model, cfg, meta = load_model(args.checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
        results = {"checkpoint": meta.get("source"), "step": meta.get("step"), "limit": args.limit}
        if not args.no_val:
            data_path, seq_len, split = validation_data(args, meta, cfg)
            if not meta.get("trained_tokenizer") and rank == 0:
                print(f"warning: {meta.get('source')}: no tokenizer recorded with this model, so the data's "
                      "tokenizer cannot be checked against it", file=sys.stderr)
            results["data"] = os.path.abspath(data_path)
            results["validation"] = validation_loss(model, data_path, seq_len, split,
                                                    max_sequences=args.val_sequences,
                                                    trained_tokenizer=meta.get("trained_tokenizer"))
        if tasks:
            tok = load_tokenizer(args.tokenizer, meta.get("tokenizer"), cfg.vocab_size)
            results.update(evaluate_tasks(model, tok, tasks, args.limit, args.batch_tokens))
            results["normalisations"] = ("raw = sum log p(continuation); per_token = raw / #tokens; per_char = "
                                         "raw / #characters (OLMo len_norm); primary = OLMo's choice per task")
    except (CheckpointError, DataPrepError, ShardError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        text = json.dumps(results, indent=1)
        if args.out:
            atomic_write_bytes(args.out, (text + "\n").encode())
        print(text)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
