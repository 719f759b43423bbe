"""One interface over the two tokenizer kinds we accept: a sentencepiece `.model` and a HF `tokenizers` `.json`.

Both are used through their own batch encoders (C++ / Rust), single-threaded per process: parallelism comes
from data_prep's worker processes, so `--workers N` means N cores and output never depends on thread timing.
Special tokens are never added by the tokenizer; data_prep appends exactly one EOS per document itself.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError

# Looked up, in this order, among a HF tokenizer's added special tokens when no --eos-token is given.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")


@dataclass(frozen=True)
class TokenizerSpec:
    """Picklable recipe to load the same tokenizer in every worker process."""
    path: str
    eos_id: int | None = None
    eos_token: str | None = None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    kind: str
    vocab_size: int
    eos_id: int

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        path = Path(spec.path)
        if not path.is_file():
            raise DataPrepError(f"{path}: tokenizer file not found")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            if path.suffix == ".json":
                self._load_hf(path)
            elif path.suffix == ".model":
                self._load_sp(path)
            else:
                raise DataPrepError(f"{path}: unknown tokenizer format (expected a sentencepiece .model or a "
                                    "HF tokenizers .json)")
        except DataPrepError:
            raise
        except Exception as e:  # the libraries raise RuntimeError/OSError/Exception on corrupt files
            raise DataPrepError(f"{path}: cannot load tokenizer ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.eos_id = self._resolve_eos(spec)
        if not 0 <= self.eos_id < self.vocab_size:
            raise DataPrepError(f"--eos-id {self.eos_id}: outside the vocabulary [0, {self.vocab_size}) of {path}")

    def _load_hf(self, path: Path) -> None:
        from tokenizers import Tokenizer as HfTokenizer
        self.kind = "hf_tokenizers"
        self._hf = HfTokenizer.from_file(str(path))
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        fast = getattr(self._hf, "encode_batch_fast", None)  # tokenizers >= 0.20: no offsets, faster
        encode = fast or self._hf.encode_batch
        self._encode = lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]
        self._decode = lambda ids: self._hf.decode(list(ids), skip_special_tokens=False)

    def _load_sp(self, path: Path) -> None:
        import sentencepiece as spm
        self.kind = "sentencepiece"
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self._sp.get_piece_size()
        self._encode = lambda texts: self._sp.encode(texts, out_type=int, num_threads=1)
        self._decode = lambda ids: self._sp.decode([int(i) for i in ids])

    def _resolve_eos(self, spec: TokenizerSpec) -> int:
        if spec.eos_id is not None:
            return spec.eos_id
        if self.kind == "sentencepiece":
            if spec.eos_token is not None:
                i = self._sp.piece_to_id(spec.eos_token)
                if self._sp.id_to_piece(i) != spec.eos_token:
                    raise DataPrepError(f"--eos-token {spec.eos_token!r}: not in {spec.path}")
                return i
            if self._sp.eos_id() < 0:
                raise DataPrepError(f"{spec.path}: the model has no EOS piece; pass --eos-id or --eos-token")
            return self._sp.eos_id()
        names = [spec.eos_token] if spec.eos_token else list(EOS_CANDIDATES)
        special = {t.content: i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        for name in names:
            i = special.get(name, self._hf.token_to_id(name) if spec.eos_token else None)
            if i is not None:
                return i
        if spec.eos_token:
            raise DataPrepError(f"--eos-token {spec.eos_token!r}: not in {spec.path}")
        raise DataPrepError(f"{spec.path}: cannot tell the EOS token (none of {', '.join(EOS_CANDIDATES)} is a "
                            "special token); pass --eos-token or --eos-id")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts)

    def decode(self, ids) -> str:
        return self._decode(ids)

    def describe(self) -> dict:
        return {"path": self.spec.path, "sha256": file_sha256(self.spec.path), "kind": self.kind,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id}
