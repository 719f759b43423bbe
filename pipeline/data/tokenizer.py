"""The tokenizer: one interface over the two kinds we accept (a sentencepiece `.model` and a HF `tokenizers`
`.json`), and the lookup of the tokenizer a model was trained with.

Both kinds are used through their own batch encoders (C++ / Rust), single-threaded per process: parallelism
is left to data_prep's worker processes, so `--workers N` means N cores and output never depends on thread
timing. Special tokens are never added by the tokenizer; data_prep appends exactly one EOS per document itself.

Which tokenizer a model was trained with: the data manifest named in the run config records its path, sha256,
vocabulary size and EOS id (CONTRACTS.md, `TokenizerRecord` in manifest.py). Exports copy that record into
export.json, so generation and evaluation can find the tokenizer from a checkpoint or an export alone (or
take --tokenizer).

Every problem raises TokenizerError, a one-line message naming the file or value.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.manifest import MANIFEST_NAME, sha256_file

# Looked up, in this order, among a HF tokenizer's added special tokens when no --eos-token is given.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")


class TokenizerError(ValueError):
    """A user-facing, one-line tokenizer problem (missing or corrupt file, unknown EOS, record mismatch)."""


@dataclass(frozen=True)
class TokenizerSpec:
    """Picklable recipe to load the same tokenizer in every worker process."""
    path: str
    eos_id: int | None = None
    eos_token: str | None = None


class Tokenizer:
    kind: str
    vocab_size: int
    eos_id: int

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        path = Path(spec.path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            if path.suffix == ".json":
                self._load_hf(path)
            elif path.suffix == ".model":
                self._load_sp(path)
            else:
                raise TokenizerError(f"{path}: unknown tokenizer format (expected a sentencepiece .model or a "
                                     "HF tokenizers .json)")
        except TokenizerError:
            raise
        except Exception as e:  # the libraries raise RuntimeError/OSError/Exception on corrupt files
            raise TokenizerError(f"{path}: cannot load tokenizer ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.eos_id = self._resolve_eos(spec)
        if not 0 <= self.eos_id < self.vocab_size:
            raise TokenizerError(f"--eos-id {self.eos_id}: outside the vocabulary [0, {self.vocab_size}) of {path}")

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
                    raise TokenizerError(f"--eos-token {spec.eos_token!r}: not in {spec.path}")
                return i
            if self._sp.eos_id() < 0:
                raise TokenizerError(f"{spec.path}: the model has no EOS piece; pass --eos-id or --eos-token")
            return self._sp.eos_id()
        names = [spec.eos_token] if spec.eos_token else list(EOS_CANDIDATES)
        special = {t.content: i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        for name in names:
            i = special.get(name, self._hf.token_to_id(name) if spec.eos_token else None)
            if i is not None:
                return i
        if spec.eos_token:
            raise TokenizerError(f"--eos-token {spec.eos_token!r}: not in {spec.path}")
        raise TokenizerError(f"{spec.path}: cannot tell the EOS token (none of {', '.join(EOS_CANDIDATES)} is a "
                             "special token); pass --eos-token or --eos-id")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts)

    def decode(self, ids) -> str:
        return self._decode(ids)

    def describe(self) -> dict:
        return {"path": self.spec.path, "sha256": sha256_file(self.spec.path), "kind": self.kind,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id}


def read_manifest_tokenizer(folder: str | Path) -> dict | None:
    """The tokenizer record {path, sha256, kind, vocab_size, eos_id} of a data folder's manifest, as written
    (path as given to data_prep), or None when the manifest is unreadable or has no record."""
    try:
        record = json.loads((Path(folder) / MANIFEST_NAME).read_text()).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and "path" in record else None


def locate_tokenizer(record: dict, bases: list[Path]) -> dict:
    """`record` with its path replaced by the absolute path of the file it names. The recorded path is tried
    as it is (absolute, or relative to the working directory) and under each of `bases` (the data folder, the
    training directory ...; also by file name alone). With a recorded sha256 only a file with that sha256 is
    taken, so which candidate comes first cannot change the result; otherwise the first existing file.
    Unchanged when nothing matches (load_tokenizer then names the recorded path)."""
    recorded = Path(record["path"])
    candidates = [recorded] + [base / recorded for base in bases] + [base / recorded.name for base in bases]
    for c in dict.fromkeys(candidates):
        if c.is_file() and (not record.get("sha256") or sha256_file(c) == record["sha256"]):
            return {**record, "path": str(c.resolve())}
    return record


def tokenizer_record_from_run_config(run_config: dict) -> dict | None:
    """The manifest's tokenizer record of the run config's data.path, or of its first data.sources folder
    (relative: to the working directory, as during training), with the tokenizer file located (see
    locate_tokenizer); None if unavailable."""
    data = run_config.get("data") or {}
    data_path = data.get("path") or ((data.get("sources") or [{}])[0].get("path"))
    if not data_path:
        return None
    record = read_manifest_tokenizer(data_path)
    return None if record is None else locate_tokenizer(record, [Path(data_path)])


def load_tokenizer(path: str | Path | None, record: dict | None, model_vocab_size: int) -> Tokenizer:
    """--tokenizer PATH if given, else the recorded one; checked against the recorded sha256 and the model.

    A record may carry no path and a `problem` (the data folder names another tokenizer than the one the
    model was trained with, or it is gone): then only --tokenizer with the trained sha256 is accepted."""
    if path is None:
        if record is None:
            raise TokenizerError("no tokenizer recorded for this model (its data manifest is not reachable): "
                                 "pass --tokenizer")
        if not record.get("path"):
            raise TokenizerError(f"{record.get('problem', 'no tokenizer path recorded')}: pass --tokenizer with "
                                 f"the tokenizer the model was trained with (sha256 {str(record.get('sha256'))[:16]}…)")
        path = record["path"]
        if not Path(path).is_file():
            raise TokenizerError(f"{path}: recorded tokenizer not found: pass --tokenizer")
        if record.get("sha256") and sha256_file(path) != record["sha256"]:
            raise TokenizerError(f"{path}: sha256 differs from the one recorded at training time")
    elif record and record.get("sha256") and Path(path).is_file() and sha256_file(path) != record["sha256"]:
        # scores or text from another tokenizer's ids would look plausible and mean nothing
        raise TokenizerError(f"--tokenizer {path}: sha256 {sha256_file(path)[:16]}… is not the tokenizer the model "
                             f"was trained with ({record['sha256'][:16]}…)")
    eos = record.get("eos_id") if record else None
    tok = Tokenizer(TokenizerSpec(str(path), eos_id=eos))
    if tok.vocab_size > model_vocab_size:
        raise TokenizerError(f"{path}: tokenizer vocab_size {tok.vocab_size} exceeds the model's vocab_size "
                             f"{model_vocab_size}")
    return tok
