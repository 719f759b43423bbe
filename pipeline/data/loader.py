"""Training / validation batches from data_prep shard folders: one (data.path) or a weighted mixture
(data.sources, pipeline/data/mixture.py), with the packing index cached beside the data
(pipeline/data/index_cache.py).

`open_split` reads the manifest (verifying sizes and index headers, or full checksums with
data.verify=full), checks that the tokenizer fits the model, and memory-maps the split's shards.
`TrainBatches` turns the packed, globally shuffled sample stream (pipeline/data/packing.py) into per-rank
micro-batches: optimizer step s consumes global samples [s*G, (s+1)*G) (G = global batch); inside that
range, micro-step m of rank r reads the chunk (m * dp_size + r) of micro_batch_size samples. The data order
therefore depends only on the seed and the global batch, not on the number of ranks, and the whole loader
position is `consumed_samples` (saved in every checkpoint).
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.index_cache import CachedIndex, content_fingerprint
from pipeline.data.indexed_dataset import IndexedShardReader, ShardError
from pipeline.data.manifest import Manifest, check_counts, load_manifest
from pipeline.data.mixture import MixedSequences
from pipeline.data.packing import IGNORE_INDEX, PackedSequences

TRAIN_STREAM, VAL_STREAM = 0, 1
INDEX_CACHE_DIR = "index_cache"   # default place of the packing index, inside the data folder


class DataMismatchError(ValueError):
    """The data does not fit the run (vocabulary, tokenizer, saved position); one line naming both sides."""


class SplitDocuments:
    """All documents of one split across its shards, memory-mapped: per rank only one integer per shard.

    Document d of the split is document d - first_doc[s] of shard s (shards in manifest order); lengths are
    gathered only to build an index (`doc_lengths()`), never kept."""

    def __init__(self, folder: Path, manifest: Manifest, split: str):
        records = manifest.split_shards(split)
        if not records:
            raise ShardError(f"{folder / 'manifest.json'}: no shards for split {split!r}")
        self.readers = [IndexedShardReader(folder / r.prefix, expected_dtype=manifest.dtype) for r in records]
        for reader, record in zip(self.readers, records):
            check_counts(reader, record)
        self._first_doc = np.cumsum([0] + [len(r) for r in self.readers], dtype=np.int64)
        self.num_docs = int(self._first_doc[-1])
        self.total_tokens = sum(r.num_tokens for r in self.readers)

    def doc_lengths(self) -> np.ndarray:
        return np.concatenate([r.sequence_lengths for r in self.readers])

    def read(self, doc: int, start: int, length: int) -> np.ndarray:
        shard = int(np.searchsorted(self._first_doc, doc, side="right")) - 1
        reader = self.readers[shard]
        base = int(reader.sequence_pointers[doc - int(self._first_doc[shard])]) // reader.dtype.itemsize + start
        return reader.tokens[base: base + length]


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
    # The shard indices are checked when SplitDocuments opens them (once, not twice per rank).
    manifest = load_manifest(folder, verify=verify, open_index=False)
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
    mixture: dict | None = None   # MixedSequences.state(); None in checkpoints from before mixtures

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TrainBatches:
    """Per-rank micro-batches of each optimizer step, with an exact, resumable position."""

    def __init__(self, sequences: MixedSequences | PackedSequences, global_batch: int, micro_batch: int,
                 dp_rank: int, dp_size: int, tokenizer_sha256: str, consumed_samples: int = 0):
        if global_batch % (micro_batch * dp_size):
            raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                             f"{dp_size} ranks")
        if isinstance(sequences, PackedSequences):   # one source: the blend maps sample i to its sample i
            sequences = MixedSequences(["train"], [1.0], [sequences])
        self.sequences = sequences
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.grad_accum = global_batch // (micro_batch * dp_size)
        self.tokenizer_sha256 = tokenizer_sha256
        self.consumed_samples = consumed_samples
        self.on_mixture_change = None   # build_loaders: re-checks repetition and builds index epochs

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

    def source_metrics(self) -> dict[str, float]:
        """data/<name>/tokens and data/<name>/epoch of every source (a mixture's per-source view)."""
        mix = self.sequences
        out = {}
        for name, n, src in zip(mix.names, mix.counts(self.consumed_samples), mix.sources):
            out[f"data/{name}/tokens"] = float(n * mix.seq_len)
            out[f"data/{name}/epoch"] = float(n / src.samples_per_epoch)
        return out

    def state_dict(self) -> dict:
        return LoaderState(self.consumed_samples, self.sequences.seed, self.sequences.seq_len,
                           self.tokenizer_sha256, self.sequences.state()).to_dict()

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
        mix = self.sequences
        old = saved.mixture or {"names": ["train"], "weights": [1.0], "segment_start": 0, "base": [0]}
        if old["names"] == mix.names and old["weights"] == mix.weights:
            mix.segment_start, mix.base = int(old["segment_start"]), np.asarray(old["base"], dtype=np.int64)
            return
        # A new mixture from here on: each source continues after the samples it already gave.
        before = MixedSequences(old["names"], old["weights"], [_Counted()] * len(old["names"]),
                                old["segment_start"], old["base"]).counts(saved.consumed_samples)
        given = dict(zip(old["names"], (int(n) for n in before)))
        mix.segment_start = saved.consumed_samples
        mix.base = np.asarray([given.get(name, 0) for name in mix.names], dtype=np.int64)
        print(f"data mixture changed at sample {saved.consumed_samples}: "
              f"{_describe(old['names'], old['weights'])} -> {_describe(mix.names, mix.weights)}", flush=True)
        if self.on_mixture_change is not None:
            self.on_mixture_change(self)


class _Counted:
    """Stand-in source for replaying an old blend's counts (only seq_len / seed are read)."""
    seq_len = seed = 0


def _describe(names, weights) -> str:
    total = sum(weights) or 1.0
    return ", ".join(f"{n} {w / total:.3f}" for n, w in zip(names, weights))


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


@dataclass
class ValSet:
    """One source's validation batches; name None for a single-source run (recorded as plain val_loss)."""
    name: str | None
    weight: float
    batches: ValBatches


def _train_stream(name: str, mixture: bool) -> tuple[int, ...]:
    # A single folder keeps the stream it always had (same samples as before mixtures existed); a mixture
    # source's stream comes from its name, so reordering or adding sources does not reshuffle the others.
    return (TRAIN_STREAM,) if not mixture else (TRAIN_STREAM, zlib.crc32(name.encode()))


def build_loaders(data_cfg, model_vocab_size: int, seed: int, global_batch: int, micro_batch: int,
                  eval_batches: int, dp_rank: int, dp_size: int, max_steps: int | None = None
                  ) -> tuple[TrainBatches, list[ValSet] | None, Manifest]:
    """The train stream (a weighted mixture of data.sources, or data.path alone) and the val sets (one per
    source, unshuffled; None when data.val_split is null).

    All sources must come from one tokenizer. With `max_steps`, a source that would be repeated more than its
    max_repetition is refused here, and the index cache gets every epoch the run will read.

    A named val_split must exist, like train_split: a misspelt or missing split used to mean "no validation"
    without a word. Training without validation data is said explicitly (data.val_split=null, which the run
    config allows only with validation off)."""
    mixture = bool(data_cfg.sources)
    sources = data_cfg.source_list()
    opened: list[tuple[Path, Manifest, SplitDocuments]] = []
    for i, src in enumerate(sources):
        folder = Path(src.path)
        manifest, docs = open_split(folder, data_cfg.train_split, data_cfg.verify, model_vocab_size,
                                    data_cfg.tokenizer_sha256)
        if opened and manifest.tokenizer.sha256 != opened[0][1].tokenizer.sha256:
            first = opened[0][1].tokenizer
            raise DataMismatchError(
                f"{folder / 'manifest.json'}: data.sources[{i}] ({src.name}) was tokenized with "
                f"{manifest.tokenizer.sha256[:16]}… ({manifest.tokenizer.path}), data.sources[0] "
                f"({sources[0].name}) with {first.sha256[:16]}… ({first.path}): a mixture must share one tokenizer")
        opened.append((folder, manifest, docs))

    def where(i: int) -> str:
        return f"data.sources[{i}] ({sources[i].name}) {opened[i][0]}" if mixture else str(opened[i][0])

    def packed(i: int, docs: SplitDocuments, split: str, shuffle: bool, stream, index=None) -> PackedSequences:
        try:
            return PackedSequences(docs, data_cfg.seq_len, seed, shuffle=shuffle, stream_id=stream, index=index)
        except ValueError as e:
            raise DataMismatchError(f"{where(i)}: {split} {e} (data.seq_len={data_cfg.seq_len})") from None

    trains, caches = [], []
    for i, ((folder, manifest, docs), src) in enumerate(zip(opened, sources)):
        stream = _train_stream(src.name, mixture)
        cache = None
        if data_cfg.index == "cache":
            root = Path(data_cfg.index_cache) if data_cfg.index_cache else folder / INDEX_CACHE_DIR
            cache = CachedIndex(root, {"content": content_fingerprint(manifest, data_cfg.train_split),
                                       "split": data_cfg.train_split}, docs, data_cfg.seq_len, seed, stream,
                                True, verify=data_cfg.verify)
        trains.append(packed(i, docs, data_cfg.train_split, True, stream, cache))
        caches.append(cache)
    mix = MixedSequences([s.name for s in sources], [s.weight for s in sources], trains)
    train = TrainBatches(mix, global_batch, micro_batch, dp_rank, dp_size, opened[0][1].tokenizer.sha256)
    if max_steps is not None:
        train.on_mixture_change = lambda t: _plan_epochs(t, sources, caches, max_steps * global_batch, where)
        train.on_mixture_change(train)
    if data_cfg.val_split is None:
        return train, None, opened[0][1]
    vals = []
    for i, ((folder, manifest, _), src) in enumerate(zip(opened, sources)):
        if not manifest.split_shards(data_cfg.val_split):
            present = sorted({s.split for s in manifest.shards})
            raise DataMismatchError(
                f"{folder / 'manifest.json'}: no shards for data.val_split={data_cfg.val_split!r} (splits here: "
                f"{', '.join(present)}); name one of them, or train without validation: data.val_split=null "
                f"eval.every=0 eval.at_end=false")
        val_docs = SplitDocuments(folder, manifest, data_cfg.val_split)
        batches = ValBatches(packed(i, val_docs, data_cfg.val_split, False, VAL_STREAM), micro_batch,
                             eval_batches, dp_rank, dp_size)
        vals.append(ValSet(src.name if mixture else None, src.weight, batches))
    return train, vals, opened[0][1]


def _plan_epochs(train: TrainBatches, sources, caches, total_samples: int, where) -> None:
    """Refuse a source repeated past its max_repetition by the end of training; build the index epochs."""
    mix = train.sequences
    needed = mix.counts(total_samples)
    for i, (src, seqs, n) in enumerate(zip(sources, mix.sources, needed)):
        epochs = int(n) / seqs.samples_per_epoch
        if src.max_repetition is not None and epochs > src.max_repetition:
            raise DataMismatchError(
                f"{where(i)}: train.max_steps takes {int(n)} sequences from it at weight {src.weight} "
                f"(share {mix.blend.weights[i]:.4f}), {epochs:.2f} epochs of its {seqs.samples_per_epoch} "
                f"sequences, more than max_repetition={src.max_repetition}")
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    for i, (cache, seqs, n) in enumerate(zip(caches, mix.sources, needed)):
        if cache is None or n == 0:
            continue
        epochs = -(-int(n) // seqs.samples_per_epoch)
        if builder and not all(cache.has_epoch(e) for e in range(epochs)):
            t0 = time.perf_counter()
            built = cache.build(epochs)
            print(f"{where(i)}: packing index for {len(built)} epoch(s) built in {cache.folder} "
                  f"({seqs.source.num_docs} documents, {time.perf_counter() - t0:.1f} s)", flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()   # every node's builder has finished before any rank opens the index
