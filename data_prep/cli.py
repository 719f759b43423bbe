"""Command line: `python -m data_prep {train-tokenizer,shard,verify,stats,index} ... [--help]`.

Every failure ends in a one-line message naming the file/line/field/value. Exit status 2: something to fix
(bad or truncated input, bad argument, corrupted shard, an output folder holding another run), argument syntax
errors included (argparse); 3: the run itself failed (a worker process died; re-run to resume); 1 is left to
unexpected crashes (a traceback), so scripts can tell them apart.
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.config.base import ConfigError, from_dict, validate_tree

EPILOG_INPUTS = ("Inputs: files, folders (recursive), globs; .txt[.gz|.zst] (a file is one document unless "
                 "--doc-split), .jsonl/.json/.ndjson[.gz|.zst], .parquet, .csv/.tsv/.arrow (via datasets), HF "
                 "save_to_disk folders, hf:BUILDER:GLOB or hf:FOLDER (datasets.load_dataset, streaming).")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, folders or globs")
    p.add_argument("--text-field", default="text", help="JSONL/Parquet/HF field holding the text (dotted for "
                   "nested JSON, e.g. meta.body) [%(default)s]")
    p.add_argument("--doc-split", choices=["none", "blank-lines", "lines"], default="none",
                   help="plain text: 'none' = each file is one document, 'blank-lines' = paragraphs, "
                   "'lines' = every line [%(default)s]")
    p.add_argument("--skip-bad", action="store_true", help="skip and count records without a usable text field "
                   "(and binary .txt files) instead of failing")
    p.add_argument("--hf-split", default=None, help="split of a HF DatasetDict folder (default: all) or of "
                   "load_dataset (default: train)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description="Offline data preparation: "
                                     "tokenizer training, token shards (Megatron .bin/.idx + manifest.json), "
                                     "verification.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train-tokenizer", help="train a sentencepiece BPE/unigram model", epilog=EPILOG_INPUTS,
                       description="Train a sentencepiece model on the inputs. Lines longer than "
                       "--max-sentence-length bytes are re-split (never dropped).")
    _add_input_args(t)
    t.add_argument("-o", "--output", required=True, help="model path to write, ending in .model (a .vocab is "
                   "written beside it)")
    t.add_argument("--vocab-size", type=int, default=32000, help="[%(default)s]")
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="[%(default)s]")
    t.add_argument("--character-coverage", type=float, default=0.9995, help="[%(default)s]")
    t.add_argument("--input-sentence-size", type=int, default=2_000_000,
                   help="lines sampled for training, 0 = all [%(default)s]")
    t.add_argument("--max-sentence-length", type=int, default=4192,
                   help="bytes; longer lines are re-split at sentence/word boundaries [%(default)s]")
    t.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false",
                   help="map unseen characters to <unk> instead of UTF-8 byte pieces")
    t.add_argument("--no-split-digits", dest="split_digits", action="store_false")
    t.add_argument("--seed", type=int, default=0, help="[%(default)s]")
    t.add_argument("--threads", type=int, default=1, help="sentencepiece trainer threads [%(default)s]")

    s = sub.add_parser("shard", help="tokenize inputs into train/val token shards", epilog=EPILOG_INPUTS,
                       description="Tokenize the inputs (EOS after every document) into Megatron indexed-dataset "
                       "shards split into train/val by a stable hash of each document, with manifest.json. "
                       "Re-running the same command resumes an interrupted run.")
    _add_input_args(s)
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("-t", "--tokenizer", required=True, help="sentencepiece .model or HF tokenizers .json")
    s.add_argument("--eos-id", type=int, default=None, help="EOS id (default: the tokenizer's)")
    s.add_argument("--eos-token", default=None, help="EOS token text (default: the tokenizer's)")
    s.add_argument("--val-fraction", type=float, default=0.01, help="share of documents in val [%(default)s]")
    s.add_argument("--split-seed", type=int, default=0, help="salt of the split hash [%(default)s]")
    s.add_argument("--shard-tokens", type=int, default=100_000_000, help="target tokens per shard [%(default)s]")
    s.add_argument("--encode-piece-chars", type=int, default=1_000_000,
                   help="documents longer than this are encoded in whitespace-aligned pieces [%(default)s]")
    s.add_argument("-j", "--workers", type=int, default=1, help="tokenizer processes [%(default)s]")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    s.add_argument("--overwrite", action="store_true", help="delete every shard, manifest and journal in "
                   "--output (another run's, or stray ones) and start over; without it such files are refused, "
                   "never deleted")

    v = sub.add_parser("verify", help="re-check every shard against manifest.json",
                       description="Check every shard's size, index structure and sha256 against manifest.json; "
                       "exit 2 naming the first bad file.")
    v.add_argument("folder", help="output folder of `shard`")
    v.add_argument("--quick", action="store_true", help="sizes and index structure only, no checksums")
    v.add_argument("--no-progress", dest="progress", action="store_false")

    st = sub.add_parser("stats", help="documents and tokens per folder; a run config's epochs per source",
                        description="Print documents, tokens and shards per split of each folder (manifest.json "
                        "only) and, with --config, the mixture of that run: each source's share, sequences drawn "
                        "in train.max_steps and the epochs that means.")
    st.add_argument("folders", nargs="*", metavar="OUT", help="output folders of `shard`")
    st.add_argument("--config", nargs="+", metavar=("RUN.yaml", "KEY=VALUE"),
                    help="run config whose data.sources / data.path to plan, then dotted overrides as for training")

    ix = sub.add_parser("index", help="build a run config's packing index cache offline",
                        description="Build the packing index cache (data.index_cache) of a run config's sources for "
                        "every epoch its train.max_steps needs, as training would at start.")
    ix.add_argument("--config", nargs="+", required=True, metavar=("RUN.yaml", "KEY=VALUE"),
                    help="run config, then dotted overrides as for training")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Never reach for the network, and keep tokenizers single-threaded: workers are the parallelism.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "command"}
    from data_prep.errors import DataPrepError
    from pipeline.data.indexed_dataset import ShardError
    from pipeline.data.tokenizer import TokenizerError
    try:
        if args.command == "shard":
            from data_prep.config import ShardConfig
            from data_prep.shard import run_shard
            cfg = from_dict(ShardConfig, values)
            validate_tree(cfg)
            run_shard(cfg)
        elif args.command == "train-tokenizer":
            from data_prep.config import TrainTokenizerConfig
            from data_prep.train_tokenizer import run_train_tokenizer
            cfg = from_dict(TrainTokenizerConfig, values)
            validate_tree(cfg)
            run_train_tokenizer(cfg)
        elif args.command == "index":
            from data_prep.build_index import run_build_index
            config, *overrides = args.config
            run_build_index(config, overrides)
        elif args.command == "stats":
            from data_prep.folder_stats import run_stats
            if not args.folders and args.config is None:
                raise ConfigError("stats: name at least one folder or --config RUN.yaml")
            config, *overrides = args.config or [None]
            run_stats(args.folders, config, overrides)
        else:
            from data_prep.verify import run_verify
            run_verify(args.folder, "size" if args.quick else "full", args.progress)
    except (DataPrepError, ShardError, TokenizerError, ConfigError) as e:
        print(f"data_prep {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", 2)
    except KeyboardInterrupt:
        print(f"data_prep {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
