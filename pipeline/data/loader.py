"""Training / validation batches from a data_prep shard folder.

`open_split` reads the manifest (verifying sizes and index headers, or full checksums with
data.verify=full), checks that the tokenizer fits the model, and memory-maps the split's shards.
`TrainBatches` turns the packed, globally shuffled sample stream (pipeline/data/packing.py) into per-rank
micro-batches: optimizer step s consumes global samples [s*G, (s+1)*G) (G = global batch); inside that
range, micro-step m of rank r reads the chunk (m * dp_size + r) of micro_batch_size samples. The data order
therefore depends only on the seed and the global batch, not on the number of ranks, and the whole loader
position is `consumed_samples` (saved in every checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.indexed_dataset import IndexedShardReader, ShardError
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.data.packing import IGNORE_INDEX, PackedSequences

TRAIN_STREAM, VAL_STREAM = 0, 1


class DataMismatchError(ValueError):
    """The data does not fit the run (vocabulary, tokenizer, saved position); one line naming both sides."""


class SplitDocuments:
    """All documents of one split across its shards: lengths in memory, tokens memory-mapped."""

    def __init__(self, folder: Path, manifest: Manifest, split: str):
        records = manifest.split_shards(split)
        if not records:
            raise ShardError(f"{folder / 'manifest.json'}: no shards for split {split!r}")
        self.readers = [IndexedShardReader(folder / r.prefix, expected_dtype=manifest.dtype) for r in records]
        self.doc_lengths = np.concatenate([r.sequence_lengths.astype(np.int64) for r in self.readers])
        self._shard_of = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, r in enumerate(self.readers)])
        # Token offset of every document inside its own shard's .bin.
        self._token_start = np.concatenate([r.sequence_pointers // r.dtype.itemsize for r in self.readers])

    def read(self, doc: int, start: int, length: int) -> np.ndarray:
        base = int(self._token_start[doc]) + start
        return self.readers[int(self._shard_of[doc])].tokens[base: base + length]


def check_data_fits_model(manifest: Manifest, folder: Path, model_vocab_size: int,
                          expected_tokenizer_sha256: str | None) -> None:
    tok = manifest.tokenizer
    where = folder / "manifest.json"
    if tok.vocab_size > model_vocab_size:
        raise DataMismatchError(f"{where}: tokenizer vocab_size {tok.vocab_size} exceeds the model's "
                                f"model.vocab_size {model_vocab_size} (token ids would index past the embedding)")
    if expected_tokenizer_sha256 and tok.sha256 != expected_tokenizer_sha256:
        raise DataMismatchError(f"{where}: tokenizer sha256 {tok.sha256[:16]}… ({tok.path}) differs from the "
                                f"run's data.tokenizer_sha256 {expected_tokenizer_sha256[:16]}…")


def open_split(folder: str | Path, split: str, verify: str, model_vocab_size: int,
               expected_tokenizer_sha256: str | None = None) -> tuple[Manifest, SplitDocuments]:
    folder = Path(folder)
    manifest = load_manifest(folder, verify=verify)
    check_data_fits_model(manifest, folder, model_vocab_size, expected_tokenizer_sha256)
    return manifest, SplitDocuments(folder, manifest, split)


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(v) for k, v in batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


@dataclass
class LoaderState:
    consumed_samples: int
    seed: int
    seq_len: int
    tokenizer_sha256: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TrainBatches:
    """Per-rank micro-batches of each optimizer step, with an exact, resumable position."""

    def __init__(self, sequences: PackedSequences, global_batch: int, micro_batch: int, dp_rank: int,
                 dp_size: int, tokenizer_sha256: str, consumed_samples: int = 0):
        if global_batch % (micro_batch * dp_size):
            raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                             f"{dp_size} ranks")
        self.sequences = sequences
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.grad_accum = global_batch // (micro_batch * dp_size)
        self.tokenizer_sha256 = tokenizer_sha256
        self.consumed_samples = consumed_samples

    def micro_batch_indices(self, step_start: int, micro_step: int) -> np.ndarray:
        chunk = micro_step * self.dp_size + self.dp_rank
        return step_start + chunk * self.micro_batch + np.arange(self.micro_batch)

    def next_step(self) -> list[dict[str, np.ndarray]]:
        """The grad_accum micro-batches of this rank for the next optimizer step."""
        start = self.consumed_samples
        batches = [self.sequences.batch(self.micro_batch_indices(start, m)) for m in range(self.grad_accum)]
        self.consumed_samples += self.global_batch
        return batches

    @property
    def epoch(self) -> float:
        return self.consumed_samples / self.sequences.samples_per_epoch

    def state_dict(self) -> dict:
        return LoaderState(self.consumed_samples, self.sequences.seed, self.sequences.seq_len,
                           self.tokenizer_sha256).to_dict()

    def load_state_dict(self, state: dict) -> None:
        saved = LoaderState(**state)
        if saved.seq_len != self.sequences.seq_len or saved.seed != self.sequences.seed:
            raise DataMismatchError(f"checkpoint data position was made with seed={saved.seed} "
                                    f"seq_len={saved.seq_len}; this run has train.seed={self.sequences.seed} "
                                    f"data.seq_len={self.sequences.seq_len}: the sample order would differ")
        if saved.tokenizer_sha256 != self.tokenizer_sha256:
            raise DataMismatchError(f"checkpoint was trained on data from tokenizer {saved.tokenizer_sha256[:16]}…, "
                                    f"data.path now has tokenizer {self.tokenizer_sha256[:16]}…")
        self.consumed_samples = saved.consumed_samples


class ValBatches:
    """A fixed validation set, the same at any world size: the first `batches` x `micro_batch` windows of the
    split (unshuffled), in `batches` micro-batches of consecutive windows; data-parallel rank r scores
    micro-batches r, r + dp, ... Every rank runs the same number of forwards (the forward may hold
    collectives: sharded OE lookups, expert all-to-alls), so when dp does not divide `batches` the ranks
    without a real micro-batch left score a padding one whose labels are all ignored (zero tokens)."""

    def __init__(self, sequences: PackedSequences, micro_batch: int, batches: int, dp_rank: int, dp_size: int):
        self.sequences, self.micro_batch, self.batches = sequences, micro_batch, batches
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def __iter__(self):
        for m in range(self.dp_rank, -(-self.batches // self.dp_size) * self.dp_size, self.dp_size):
            batch = self.sequences.batch((m % self.batches) * self.micro_batch + np.arange(self.micro_batch))
            if m >= self.batches:
                batch = {**batch, "labels": np.full_like(batch["labels"], IGNORE_INDEX)}
            yield batch


def build_loaders(data_cfg, model_vocab_size: int, seed: int, global_batch: int, micro_batch: int,
                  eval_batches: int, dp_rank: int, dp_size: int) -> tuple[TrainBatches, ValBatches | None, Manifest]:
    """The train stream (shuffled) and the val set (unshuffled; None when data.val_split is null).

    A named val_split must exist, like train_split: a misspelt or missing split used to mean "no validation"
    without a word. Training without validation data is said explicitly (data.val_split=null, which the run
    config allows only with validation off)."""
    folder = Path(data_cfg.path)
    manifest, train_docs = open_split(folder, data_cfg.train_split, data_cfg.verify, model_vocab_size,
                                      data_cfg.tokenizer_sha256)

    def packed(docs: SplitDocuments, split: str, shuffle: bool, stream: int) -> PackedSequences:
        try:
            return PackedSequences(docs, data_cfg.seq_len, seed, shuffle=shuffle, stream_id=stream)
        except ValueError as e:
            raise DataMismatchError(f"{folder}: {split} {e} (data.seq_len={data_cfg.seq_len})") from None

    train = TrainBatches(packed(train_docs, data_cfg.train_split, True, TRAIN_STREAM), global_batch, micro_batch,
                         dp_rank, dp_size, manifest.tokenizer.sha256)
    val = None
    if data_cfg.val_split is not None:
        if not manifest.split_shards(data_cfg.val_split):
            present = sorted({s.split for s in manifest.shards})
            raise DataMismatchError(
                f"{folder / 'manifest.json'}: no shards for data.val_split={data_cfg.val_split!r} (splits here: "
                f"{', '.join(present)}); name one of them, or train without validation: data.val_split=null "
                f"eval.every=0 eval.at_end=false")
        val_docs = SplitDocuments(folder, manifest, data_cfg.val_split)
        val = ValBatches(packed(val_docs, data_cfg.val_split, False, VAL_STREAM), micro_batch, eval_batches,
                         dp_rank, dp_size)
    return train, val, manifest
