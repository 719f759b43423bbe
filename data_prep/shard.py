"""`python -m data_prep shard`: inputs -> tokenized, train/val split, checksummed Megatron shards + manifest.

Pipeline: the parent streams documents from every input in order (readers.py), repairs and counts bad text,
assigns each document to a split by its hash, groups documents into chunks, has them tokenized in order
(encode_pool.py), and appends the results to one rotating shard writer per split (shard_writer.py). Finished
shards are journaled (resume.py); the manifest is written last.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from data_prep.config import ShardConfig
from data_prep.encode_pool import EncodeSettings, OrderedEncoder
from data_prep.errors import DataPrepError
from data_prep.progress import ByteProgress
from data_prep.readers import ReadOptions, iter_nonempty, read_documents
from data_prep.resume import LOCK_NAME, lock_folder, prepare_output
from data_prep.shard_writer import SplitWriter
from data_prep.sources import InputSource, expand_inputs
from data_prep.split_assign import TRAIN, VAL, SplitAssigner
from data_prep.stats import InputStats
from data_prep.text import encode_utf8
from pipeline.data.indexed_dataset import dtype_for_vocab
from pipeline.data.manifest import FORMAT_VERSION, SPLITS, Manifest, TokenizerRecord, write_manifest
from pipeline.data.tokenizer import Tokenizer, TokenizerSpec

CHUNK_CHARS = 1 << 19      # ~0.5 MB of text per task: large enough to amortise IPC, small enough to balance
CHUNK_DOCS = 4096


def fingerprint(cfg: ShardConfig, sources: list[InputSource], tokenizer: dict, dtype: str) -> str:
    """Hash of everything that determines the output bytes (inputs' sizes and mtimes included). Not the output
    folder or the tokenizer's path: a moved folder or tokenizer file still resumes."""
    args = {k: v for k, v in cfg.recorded().items() if k not in ("output", "tokenizer")}
    tok = {k: v for k, v in tokenizer.items() if k != "path"}
    key = {"format_version": FORMAT_VERSION, "arguments": args, "tokenizer": tok, "dtype": dtype,
           "inputs": [s.identity() for s in sources]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _split_chunk(flags: np.ndarray, tokens: np.ndarray, lengths: np.ndarray):
    """Yield (split, tokens, lengths) for the train and val documents of a chunk, each in input order."""
    if not flags.any():
        yield TRAIN, tokens, lengths
        return
    if flags.all():
        yield VAL, tokens, lengths
        return
    token_is_val = np.repeat(flags, lengths)
    yield TRAIN, tokens[~token_is_val], lengths[~flags]
    yield VAL, tokens[token_is_val], lengths[flags]


def run_shard(cfg: ShardConfig, log=print) -> Manifest:
    sources = expand_inputs(cfg.inputs, exclude=cfg.output)
    tokenizer = Tokenizer(TokenizerSpec(cfg.tokenizer, cfg.eos_id, cfg.eos_token))
    folder = Path(cfg.output)
    lock = lock_folder(folder)
    try:
        return _run_locked(cfg, sources, tokenizer, folder, log)
    finally:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        lock.close()


def _run_locked(cfg: ShardConfig, sources: list[InputSource], tokenizer: Tokenizer, folder: Path, log) -> Manifest:
    t_start = time.time()
    tok_info = tokenizer.describe()
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    fp = fingerprint(cfg, sources, tok_info, dtype)
    state, journal = prepare_output(folder, fp, dtype, cfg.overwrite)
    if state.complete is not None:
        log(f"{folder}: already complete ({state.complete.totals['all']['tokens']:,} tokens in "
            f"{len(state.complete.shards)} shards, all checksums verified); nothing to do")
        return state.complete
    if state.resumed:
        log(f"{folder}: resuming; kept " + ", ".join(f"{len(state.kept[s])} {s}" for s in SPLITS) +
            " verified shards")

    opts = ReadOptions(cfg.text_field, cfg.doc_split, cfg.skip_bad, cfg.hf_split)
    assigner = SplitAssigner(cfg.val_fraction, cfg.split_seed)
    # Documents of each split already in kept shards, indexed by "is val" (False = train, True = val).
    skip = {split == VAL: sum(r.documents for r in state.kept[split]) for split in SPLITS}
    per_input: list[tuple[InputSource, InputStats]] = []
    progress = ByteProgress(sum(s.nbytes() for s in sources), enabled=cfg.progress)

    def chunks() -> Iterator[tuple[np.ndarray, list[str]]]:
        """(is-val flags, texts) of ~CHUNK_CHARS each, in input order. One flat loop per document: this runs
        in the parent for every document, so it avoids per-document generator layers and calls."""
        flags, texts, size = [], [], 0
        is_val, piece_chars = assigner.is_val, cfg.encode_piece_chars
        for src in sources:
            stats = InputStats()
            per_input.append((src, stats))
            reader = read_documents(src, opts, stats)
            progress.start_input()
            for text in iter_nonempty(reader):
                try:
                    data = text.encode("utf-8")
                except UnicodeEncodeError:
                    data, text, repaired = encode_utf8(text)
                    stats.surrogates_repaired += repaired
                if len(text) > piece_chars:
                    stats.long_documents_split += 1
                val = is_val(data)
                if skip[val]:
                    skip[val] -= 1   # already in a kept shard of an interrupted run
                    continue
                flags.append(val)
                texts.append(text)
                size += len(text)
                if size >= CHUNK_CHARS or len(texts) >= CHUNK_DOCS:
                    progress.input_at(reader.consumed)
                    yield np.array(flags, dtype=bool), texts
                    flags, texts, size = [], [], 0
            progress.input_at(reader.consumed)
        if texts:
            yield np.array(flags, dtype=bool), texts

    writers = {s: SplitWriter(folder, s, dtype, cfg.shard_tokens, len(state.kept[s]), journal.append)
               for s in SPLITS}
    settings = EncodeSettings(TokenizerSpec(cfg.tokenizer, tokenizer.eos_id, None), dtype, cfg.encode_piece_chars)
    try:
        with OrderedEncoder(settings, cfg.workers, tokenizer if cfg.workers == 1 else None) as encoder:
            for flags, tokens, lengths in encoder.results(chunks()):
                for split, t, n in _split_chunk(flags, tokens, lengths):
                    writers[split].add(t, n)
                progress.tokens(int(tokens.size))
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        # A journal without shards has nothing to resume; left behind it would only make the next run with other
        # inputs (e.g. the fixed file) refuse this folder as another run's.
        journal.close(remove=not any(state.kept.values()) and not any(w.records for w in writers.values()))
        progress.close()
        raise
    progress.close()

    shards = [r for s in SPLITS for r in state.kept[s] + writers[s].records]
    total = InputStats()
    for _, st in per_input:
        total.add(st)
    if not shards:
        journal.close(remove=True)
        raise DataPrepError(f"no usable text in {len(sources)} input(s): {total.empty_skipped} empty documents, "
                            f"{total.bad_records_skipped} bad records, {total.binary_files_skipped} binary files "
                            "skipped; nothing was written")
    manifest = Manifest(
        dtype=dtype, tokenizer=TokenizerRecord(**tok_info), shards=shards, fingerprint=fp,
        inputs=[{"path": src.path, "format": src.format, "bytes": src.nbytes(), **st.nonzero(),
                 "documents": st.documents} for src, st in per_input],
        arguments=cfg.recorded(), statistics=total.as_dict())
    write_manifest(folder, manifest)
    journal.close(remove=True)
    elapsed = time.time() - t_start
    tot = manifest.totals
    log(f"{folder}: {tot['train']['shards']} train + {tot['val']['shards']} val shards, "
        f"{tot['all']['documents']:,} documents, {tot['all']['tokens']:,} tokens ({dtype}) in {elapsed:.1f} s "
        f"({tot['all']['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s)"
        + "".join(f"; {k.replace('_', ' ')}: {v:,}" for k, v in total.nonzero().items() if k != "documents"))
    for s in SPLITS:
        if tot[s]["shards"] == 0 and (s == TRAIN or cfg.val_fraction > 0):
            print(f"warning: the {s} split is empty (--val-fraction {cfg.val_fraction})", file=sys.stderr)
    return manifest
