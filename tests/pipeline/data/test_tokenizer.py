"""pipeline/data/tokenizer.py: loading a tokenizer, finding the one a run was trained with, and one-line
TokenizerError messages for every problem."""
from __future__ import annotations

import json

import pytest

from pipeline.data.manifest import sha256_file as file_sha256
from pipeline.data.tokenizer import (Tokenizer, TokenizerError, TokenizerSpec, load_tokenizer,
                                     tokenizer_record_from_run_config)


@pytest.fixture()
def word_tokenizer(tmp_path) -> str:
    from tokenizers import Tokenizer as HfTokenizer, models, pre_tokenizers
    vocab = {"<unk>": 0, "a": 1, "b": 2, "</s>": 3}
    tok = HfTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    path = tmp_path / "tok.json"
    tok.save(str(path))
    return str(path)


def test_load_encode_describe(word_tokenizer):
    tok = Tokenizer(TokenizerSpec(word_tokenizer))
    assert (tok.kind, tok.vocab_size, tok.eos_id) == ("hf_tokenizers", 4, 3)
    assert tok.encode_batch(["a b a"]) == [[1, 2, 1]]
    assert tok.describe()["sha256"] == file_sha256(word_tokenizer)


@pytest.mark.parametrize("spec,message", [
    (lambda d, t: TokenizerSpec(str(d / "nope.json")), "nope.json: tokenizer file not found"),
    (lambda d, t: TokenizerSpec(t, eos_id=9), "--eos-id 9: outside the vocabulary [0, 4)"),
    (lambda d, t: TokenizerSpec(t, eos_token="<x>"), "--eos-token '<x>': not in"),
])
def test_load_errors_are_one_line(tmp_path, word_tokenizer, spec, message):
    with pytest.raises(TokenizerError) as e:
        Tokenizer(spec(tmp_path, word_tokenizer))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def _data_folder(tmp_path, record: dict) -> str:
    d = tmp_path / "shards"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"tokenizer": record}))
    return str(d)


def test_record_lookup_and_load(tmp_path, word_tokenizer):
    record = Tokenizer(TokenizerSpec(word_tokenizer)).describe()
    data = _data_folder(tmp_path, record)
    found = tokenizer_record_from_run_config({"data": {"path": data}})
    assert found["sha256"] == record["sha256"] and found["eos_id"] == 3
    assert load_tokenizer(None, found, model_vocab_size=4).vocab_size == 4
    assert tokenizer_record_from_run_config({"data": {"path": str(tmp_path / "none")}}) is None
    assert tokenizer_record_from_run_config({}) is None


def test_load_tokenizer_errors(tmp_path, word_tokenizer):
    record = Tokenizer(TokenizerSpec(word_tokenizer)).describe()
    cases = [
        ((None, None, 4), "no tokenizer recorded for this model"),
        ((None, {**record, "path": str(tmp_path / "gone.json")}, 4), "recorded tokenizer not found: pass --tokenizer"),
        ((None, {**record, "sha256": "0" * 64}, 4), "sha256 differs from the one recorded at training time"),
        ((word_tokenizer, None, 3), "tokenizer vocab_size 4 exceeds the model's vocab_size 3"),
    ]
    for args, message in cases:
        with pytest.raises(TokenizerError) as e:
            load_tokenizer(*args)
        assert message in str(e.value) and "\n" not in str(e.value)
