"""Tokenization of document chunks, in-process (1 worker) or in N worker processes, results in input order.

Why the split of work: the parent streams documents (cheap: I/O, UTF-8, hashing) and writes shards; workers
only encode. Results are consumed strictly in submission order, so the shard bytes depend only on the input,
never on N or scheduling. At most `2 N + 2` chunks are in flight, so memory stays flat however fast the
reader is (a plain Pool.imap would queue the whole corpus).
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from data_prep.errors import RunFailure
from data_prep.text import split_text
from pipeline.data.tokenizer import Tokenizer, TokenizerSpec


@dataclass(frozen=True)
class EncodeSettings:
    tokenizer: TokenizerSpec
    dtype: str                  # token dtype of the shards ("uint16" | "int32")
    piece_chars: int            # documents longer than this are encoded in whitespace-aligned pieces


class ChunkEncoder:
    def __init__(self, settings: EncodeSettings, tokenizer: Tokenizer | None = None):
        self.settings = settings
        self.tokenizer = tokenizer or Tokenizer(settings.tokenizer)
        self.eos = self.tokenizer.eos_id
        self.dtype = np.dtype(settings.dtype)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the documents, concatenated with one EOS after each, and the per-document lengths."""
        limit = self.settings.piece_chars
        if max(map(len, texts)) <= limit:
            return self._encode_batch(texts)
        tokens, lengths, short = [], [], []
        for text in texts:
            if len(text) <= limit:
                short.append(text)
                continue
            if short:
                t, n = self._encode_batch(short)
                tokens.append(t)
                lengths.append(n)
                short = []
            doc = self._encode_long(text, limit)
            tokens.append(doc)
            lengths.append(np.array([doc.size], dtype=np.int64))
        if short:
            t, n = self._encode_batch(short)
            tokens.append(t)
            lengths.append(n)
        return np.concatenate(tokens), np.concatenate(lengths)

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        for x in ids:
            x.append(self.eos)
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
        return tokens, lengths

    def _encode_long(self, text: str, limit: int) -> np.ndarray:
        """A giant document (e.g. a 100 MB single line) is encoded piece by piece, cut at newlines/spaces, each
        piece's ids turned into a compact array at once: the tokenizer's per-token Python objects never exist
        for more than one piece, so memory stays near the size of the text itself."""
        parts = [np.fromiter(self.tokenizer.encode_batch([piece])[0], dtype=self.dtype)
                 for piece in split_text(text, limit)]
        parts.append(np.array([self.eos], dtype=self.dtype))
        return np.concatenate(parts)


_worker: ChunkEncoder | None = None


def _init_worker(settings: EncodeSettings) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: let the parent alone handle it (it cancels and shuts us down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = ChunkEncoder(settings)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker is not None
    return _worker(texts)


class OrderedEncoder:
    """`results(chunks)` yields (meta, tokens, lengths) in the order of `chunks`, each chunk = (meta, texts)."""

    def __init__(self, settings: EncodeSettings, workers: int, tokenizer: Tokenizer | None = None):
        self.workers = workers
        self._local = ChunkEncoder(settings, tokenizer) if workers == 1 else None
        self._pool = None
        if workers > 1:
            # spawn, not fork: the parent may hold threads (tqdm, tokenizers) that fork would copy mid-state.
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(settings,))

    def results(self, chunks: Iterator[tuple[Any, list[str]]]) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        if self._local is not None:
            for meta, texts in chunks:
                yield (meta, *self._local(texts))
            return
        window = 2 * self.workers + 2
        pending: deque[tuple[Any, Future]] = deque()
        try:
            for meta, texts in chunks:
                pending.append((meta, self._pool.submit(_encode_in_worker, texts)))
                if len(pending) >= window:
                    m, fut = pending.popleft()
                    yield (m, *fut.result())
            while pending:
                m, fut = pending.popleft()
                yield (m, *fut.result())
        except BrokenProcessPool:
            raise RunFailure("a tokenizer worker process died (killed, or out of memory?); re-run the same "
                             "command to resume") from None

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None

    def __enter__(self) -> "OrderedEncoder":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(cancel=exc_type is not None)

