"""The exported tokenizer: `AutoTokenizer.from_pretrained(export)` encodes and decodes like our tokenizer
(pipeline/data/tokenizer.py) on the same lines, for a sentencepiece BPE model trained by data_prep and for
OLMoE's HF tokenizers.json; special tokens; a unigram model differs only by the order of equal-score pieces
(and on literal special-piece names, see below)."""
from __future__ import annotations

import random

import pytest

from pipeline.data.tokenizer import Tokenizer, TokenizerSpec
from pipeline.export.hf_tokenizer import write_hf_tokenizer
from tests.pipeline.export.hf_helpers import TRAIN_PLAYS, olmoe_tokenizer, play_lines, train_spm, transformers

EDGE_CASES = ["", " ", "   ", "\t", "a  b   c    d ", "  leading and trailing  ", "line\nbreak\r\nand\ttab",
              "digits 1234567890 3.14159 -42", "café naïve façade déjà vu", "日本語のテキスト 中文", "emoji 😀🎭 ok",
              "</s> <s> <pad> <unk> <|endoftext|> <|padding|> in text", "\u2581 the escape symbol itself",
              "<0x41> a byte piece's name", "'Tis — “quoted” … ‘single’", "x" * 300]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """A few hundred lines the sentencepiece model was NOT trained on, plus the edge cases above."""
    held_out = [line for line in play_lines(("othello_gut.txt", "lear_gut.txt")) if line.strip()]
    rng = random.Random(0)
    return rng.sample(held_out, 300) + EDGE_CASES


def _round_trip(tmp_path, path: str, lines: list[str]):
    ours = Tokenizer(TokenizerSpec(path))
    ids = write_hf_tokenizer(tmp_path, ours, model_max_length=256)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours_ids = ours.encode_batch(lines)
    return ours, hf, ids, ours_ids, hf(lines).input_ids


@pytest.mark.parametrize("kind", ["sentencepiece-bpe", "olmoe-json"])
def test_autotokenizer_encodes_and_decodes_like_ours(tmp_path, lines, kind):
    path = train_spm(tmp_path / "bpe.model") if kind == "sentencepiece-bpe" else olmoe_tokenizer()
    ours, hf, special, ours_ids, hf_ids = _round_trip(tmp_path / "export", path, lines)
    same_ids = sum(a == b for a, b in zip(ours_ids, hf_ids))
    same_text = sum(ours.decode(a) == hf.decode(a) for a in ours_ids)
    print(f"{kind}: {same_ids}/{len(lines)} lines encode identically, {same_text}/{len(lines)} decode identically")
    assert same_ids == same_text == len(lines)
    assert sum(map(len, ours_ids)) > 2000                       # thousands of tokens, not a vacuous test
    # lossless too, but for sentencepiece's own whitespace symbol, which it decodes as a space
    assert all(ours.decode(a) == line for a, line in zip(ours_ids, lines) if "\u2581" not in line)
    # eos = the EOS data_prep appends; bos = the same token (never added to text); pad = the padding token
    assert hf.eos_token_id == ours.eos_id == special["eos_token_id"] == special["bos_token_id"] == hf.bos_token_id
    assert hf.convert_ids_to_tokens(hf.pad_token_id) == ("<pad>" if kind == "sentencepiece-bpe" else "<|padding|>")
    assert hf("To be, or not").input_ids == ours.encode_batch(["To be, or not"])[0]   # nothing added
    batch = hf(["short", "a longer line of text"], padding=True)
    assert batch.input_ids[0][0] == hf.pad_token_id and batch.attention_mask[0][0] == 0     # left padding


def test_unigram_differs_only_in_the_order_of_equal_score_pieces(tmp_path):
    import sentencepiece as spm

    path = train_spm(tmp_path / "uni.model", model_type="unigram")
    # literal piece names ("</s>", "<0x41>") whose characters are no pieces of this small vocabulary: HF's
    # unigram lattice holds them (at a floor score) and prefers them to unknown characters; sentencepiece's not
    lines = play_lines()[:40000] + [line for line in EDGE_CASES if "<" not in line]
    ours, hf, _, ours_ids, hf_ids = _round_trip(tmp_path / "export", path, lines)
    sp = spm.SentencePieceProcessor(model_file=path)
    differing = [(a, b) for a, b in zip(ours_ids, hf_ids) if a != b]
    print(f"unigram: {len(lines) - len(differing)}/{len(lines)} lines encode identically")
    assert len(differing) < len(lines) / 1000
    for a, b in differing:   # e.g. a run of 7 spaces as ▁▁▁ ▁▁▁ ▁ versus ▁ ▁▁▁ ▁▁▁
        assert sorted(a) == sorted(b) and hf.decode(b) == ours.decode(a)
        assert sum(map(sp.get_score, a)) == pytest.approx(sum(map(sp.get_score, b)))
