"""`python -m data_prep train-tokenizer`: a sentencepiece BPE or unigram model from any supported input.

sentencepiece trains on lines and silently skips lines longer than `max_sentence_length` bytes (4192 by
default) — a whole State of the Union speech is one such line. We feed it every line of every document
ourselves and re-split long lines at newlines / sentence ends / spaces (text.split_bytes) so nothing is dropped.
Defaults follow current open LLM tokenizers (Llama, OLMo-style): identity normalisation (lossless: decode
reproduces the text), byte fallback (no <unk> for unseen characters), digits split, whitespace kept, and no
dummy-prefix space (as in byte-level BPE: a document or piece encodes the same wherever it is cut).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep.config import TrainTokenizerConfig
from data_prep.errors import DataPrepError
from data_prep.readers import ReadOptions, iter_nonempty, read_documents
from data_prep.sources import expand_inputs
from data_prep.stats import InputStats
from data_prep.text import encode_utf8, split_bytes
from pipeline.data.atomic_io import atomic_write_bytes

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}


@dataclass
class LineStats:
    lines: int = 0
    long_lines_resplit: int = 0
    pieces_from_long_lines: int = 0


def training_lines(cfg: TrainTokenizerConfig, stats: InputStats, lines: LineStats) -> Iterator[str]:
    # Plain text is read line by line (doc_split="lines"), so a huge text file never sits in memory whole.
    opts = ReadOptions(cfg.text_field, "lines", cfg.skip_bad, cfg.hf_split)
    limit = cfg.max_sentence_length
    for src in expand_inputs(cfg.inputs):
        for doc in iter_nonempty(read_documents(src, opts, stats)):
            data, doc, repaired = encode_utf8(doc)
            stats.surrogates_repaired += repaired
            for line in doc.split("\n"):
                line = line.rstrip("\r")
                if not line.strip():
                    continue
                raw = line.encode("utf-8")
                if len(raw) <= limit:
                    lines.lines += 1
                    yield line
                    continue
                lines.long_lines_resplit += 1
                for piece in split_bytes(raw, limit):
                    piece_text = piece.decode("utf-8").strip()
                    if piece_text:
                        lines.lines += 1
                        lines.pieces_from_long_lines += 1
                        yield piece_text


def write_vocab(sp, path: Path) -> None:
    rows = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}" for i in range(sp.get_piece_size()))
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def run_train_tokenizer(cfg: TrainTokenizerConfig, log=print) -> Path:
    import sentencepiece as spm
    t0 = time.time()
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats, lines = InputStats(), LineStats()
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_lines(cfg, stats, lines), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=cfg.max_sentence_length, byte_fallback=cfg.byte_fallback,
            split_digits=cfg.split_digits, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True, num_threads=cfg.threads, minloglevel=2,
            **SPECIAL_IDS)
    except DataPrepError:
        raise
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if lines.lines == 0:
            raise DataPrepError(f"no usable text in {len(cfg.inputs)} input(s) to train a tokenizer on") from None
        raise DataPrepError(f"sentencepiece training failed: {msg}") from None
    atomic_write_bytes(out, model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    write_vocab(sp, out.with_suffix(".vocab"))
    log(f"{out}: {cfg.model_type} vocab {sp.get_piece_size():,} from {lines.lines:,} lines in "
        f"{time.time() - t0:.1f} s; {lines.long_lines_resplit:,} lines over "
        f"{cfg.max_sentence_length} bytes re-split into {lines.pieces_from_long_lines:,} pieces"
        + "".join(f"; {k.replace('_', ' ')}: {v:,}" for k, v in stats.nonzero().items()
                  if k not in ("documents", "empty_skipped")))
    return out
