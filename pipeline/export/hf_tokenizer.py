"""The tokenizer files of a HF export, so `transformers.AutoTokenizer.from_pretrained(export)` encodes and
decodes exactly like pipeline/data/tokenizer.py on the same text.

- HF tokenizers `.json` (e.g. OLMoE's): copied byte for byte as tokenizer.json (same sha256, so the export's
  own record of the trained tokenizer points at it).
- sentencepiece `.model` from data_prep (identity normalisation, no dummy prefix, byte fallback; BPE or
  unigram): converted to a tokenizer.json and the .model copied beside it. The conversion needs no
  pre-tokenizer: sentencepiece splits words before every run of "▁", and no vocabulary piece has "▁" after a
  non-"▁" character, so no merge (BPE) or piece (unigram) can cross such a boundary anyway. BPE merges are
  every split of a normal piece into two normal pieces, ranked by the piece's score (sentencepiece merges
  the pair whose result scores highest); unigram keeps the scores (non-text pieces get a floor score).
  Control pieces (<s>, </s>, <pad>) and <unk> are special tokens never matched inside text
  (`split_special_tokens`), as sentencepiece never matches them either.
  Exact for BPE (tests/pipeline/export/test_hf_tokenizer.py). Unigram may order equal-score pieces of a
  repeated run differently (e.g. 7 spaces as "▁"+"▁▁▁"+"▁▁▁" instead of "▁▁▁"+"▁▁▁"+"▁": the same pieces
  and the same score; 8 of 40,014 Shakespeare lines in the test), and text holding a literal control or
  byte piece name ("</s>", "<0x41>") whose characters are not pieces encodes to that piece (sentencepiece:
  to bytes).

Special tokens: eos = the EOS data_prep appended to every document; bos = the same token (a document in
training is preceded by the previous one's EOS, which is what an empty prompt starts from in
launch/generate.py; the tokenizer never adds it to text); pad = the tokenizer's padding token, else EOS.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.data.tokenizer import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
SPM_FILE = "tokenizer.model"
PAD_NAMES = ("<pad>", "<|padding|>", "<|pad|>", "[PAD]")


class TokenizerExportError(ValueError):
    """A tokenizer this converter cannot reproduce exactly; one line naming the file and the setting."""


def _spm_proto(path: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    norm = proto.normalizer_spec
    for field, value, wanted in (("normalizer_spec.name", norm.name, "identity"),
                                 ("normalizer_spec.add_dummy_prefix", norm.add_dummy_prefix, False),
                                 ("normalizer_spec.remove_extra_whitespaces", norm.remove_extra_whitespaces, False),
                                 ("trainer_spec.treat_whitespace_as_suffix",
                                  proto.trainer_spec.treat_whitespace_as_suffix, False)):
        if value != wanted:   # data_prep's train-tokenizer always writes the wanted value
            raise TokenizerExportError(f"{path}: {field} is {value!r}; the HF conversion handles {wanted!r} only "
                                       "(data_prep's train-tokenizer settings)")
    if proto.trainer_spec.model_type not in (1, 2):
        raise TokenizerExportError(f"{path}: trainer_spec.model_type {proto.trainer_spec.model_type} is neither "
                                   "unigram (1) nor BPE (2)")
    return proto


def spm_to_tokenizers(path: str):
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece model at `path` (module docstring)."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, normalizers

    proto = _spm_proto(path)
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]      # type 1 normal, 2 unknown, 3 control
    unk = proto.trainer_spec.unk_id
    byte_fallback = proto.trainer_spec.byte_fallback
    normal = {piece: i for i, (piece, _, kind) in enumerate(pieces) if kind == 1}
    if proto.trainer_spec.model_type == 2:
        ranked = sorted((-score, i, normal[piece[:j]], piece[:j], piece[j:]) for piece, i in normal.items()
                        for score in [pieces[i][1]]
                        for j in range(1, len(piece)) if piece[:j] in normal and piece[j:] in normal)
        model = models.BPE(vocab={piece: i for i, (piece, _, _) in enumerate(pieces)},
                           merges=[(left, right) for *_, left, right in ranked],
                           unk_token=pieces[unk][0], fuse_unk=True, byte_fallback=byte_fallback)
    else:
        # sentencepiece's lattice holds normal pieces only; HF's holds every vocabulary entry, so the others
        # (<s>, </s>, <0x41>, ...) get a score no segmentation of text would choose over plain pieces
        floor = min(pieces[i][1] for i in normal.values()) - 1000.0
        model = models.Unigram([(piece, score if kind == 1 else floor) for piece, score, kind in pieces],
                               unk_id=unk, byte_fallback=byte_fallback)
    tok = HfTokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                            for piece, _, kind in pieces if kind in (2, 3)])
    return tok


def _special_tokens(tok: Tokenizer, vocab: dict[str, int]) -> dict[str, str | None]:
    by_id = {i: piece for piece, i in vocab.items()}
    eos = by_id.get(tok.eos_id)
    if eos is None:
        raise TokenizerExportError(f"{tok.spec.path}: EOS id {tok.eos_id} has no token")
    pad = next((name for name in PAD_NAMES if name in vocab), eos)
    unk = "<unk>" if tok.kind == "sentencepiece" and "<unk>" in vocab else None
    return {"eos_token": eos, "bos_token": eos, "pad_token": pad, "unk_token": unk}


def write_hf_tokenizer(folder: Path, tok: Tokenizer, model_max_length: int) -> dict[str, int]:
    """Write tokenizer.json (+ tokenizer.model), tokenizer_config.json into `folder`; -> the special token ids
    {bos_token_id, eos_token_id, pad_token_id} for config.json / generation_config.json."""
    from tokenizers import Tokenizer as HfTokenizer
    from transformers import PreTrainedTokenizerFast

    source = tok.spec.path
    backend = spm_to_tokenizers(source) if tok.kind == "sentencepiece" else HfTokenizer.from_file(source)
    vocab = backend.get_vocab(with_added_tokens=True)
    special = _special_tokens(tok, vocab)
    # left padding: what batched generate() needs, and what the model treats exactly like no padding
    wrapper = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length,
                                      clean_up_tokenization_spaces=False, padding_side="left",
                                      split_special_tokens=tok.kind == "sentencepiece",
                                      **{k: v for k, v in special.items() if v is not None})
    wrapper.save_pretrained(str(folder))
    if tok.kind == "sentencepiece":
        shutil.copyfile(source, folder / SPM_FILE)
    else:   # the trained file itself, not transformers' re-serialisation of it
        shutil.copyfile(source, folder / TOKENIZER_JSON)
    return {"bos_token_id": vocab[special["bos_token"]], "eos_token_id": tok.eos_id,
            "pad_token_id": vocab[special["pad_token"]]}


def exported_tokenizer_file(tok: Tokenizer) -> str:
    """Name, inside the export, of the byte-identical copy of the trained tokenizer (export.json records it)."""
    return SPM_FILE if tok.kind == "sentencepiece" else TOKENIZER_JSON
