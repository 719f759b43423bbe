"""train-tokenizer: BPE and unigram, lossless defaults, long lines re-split rather than dropped; CLI help."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from tests.data_prep.conftest import make_docs, run_cli


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_long_lines_are_resplit_not_dropped(tmp_path, model_type):
    docs = make_docs(150, seed=2)
    # The only occurrences of "ж" sit inside one 20 kB line: sentencepiece alone would skip that line
    # (> 4192 bytes), so "ж" could only become a piece if our re-splitting fed the line to the trainer.
    long_line = " ".join(f"word{i % 50}ж" for i in range(2500))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + [long_line]))
    model = tmp_path / "m.model"
    rc, out, err = run_cli("train-tokenizer", tmp_path / "c.jsonl", "-o", model, "--vocab-size", 400,
                           "--model-type", model_type, "--character-coverage", 1.0)
    assert rc == 0, err
    assert "1 lines over 4192 bytes re-split" in out
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 400 and sp.piece_to_id("ж") != sp.unk_id()
    assert (sp.eos_id(), sp.pad_id()) == (2, 3)
    assert (tmp_path / "m.vocab").read_text().count("\n") == 400
    text = "Café  naïve\tdéjà\n\n日本 😀 words ж"
    assert sp.decode(sp.encode(text)) == text          # identity normalisation + byte fallback: lossless


def test_training_is_deterministic(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(make_docs(100, seed=4)))
    models = []
    for i in range(2):
        rc, _, err = run_cli("train-tokenizer", tmp_path / "c.txt", "-o", tmp_path / f"m{i}.model",
                             "--vocab-size", 600)
        assert rc == 0, err
        models.append((tmp_path / f"m{i}.model").read_bytes())
    assert models[0] == models[1]


def test_errors_and_help(tmp_path):
    (tmp_path / "e.txt").write_text("  \n")
    rc, _, err = run_cli("train-tokenizer", tmp_path / "e.txt", "-o", tmp_path / "m.model", "--vocab-size", 600)
    assert rc == 2 and "no usable text" in err
    rc, _, err = run_cli("train-tokenizer", tmp_path / "e.txt", "-o", tmp_path / "m.bin")
    assert rc == 2 and "--output: must be a path ending in .model" in err
    for cmd in ("train-tokenizer", "shard", "verify"):
        rc, out, _ = run_cli(cmd, "--help")
        assert rc == 0 and "usage: python -m data_prep " + cmd in out
