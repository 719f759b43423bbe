"""Validation loss and perplexity on a data_prep manifest's validation split, with the training loader's
packing (pipeline/data/packing.py: unshuffled, documents packed into seq_len windows, no prediction across
a document boundary, attention and n-gram context reset at document starts as in training).

The loss is the token-weighted mean next-token cross-entropy of the main head (the trainer's val_loss),
over the whole split or its first `max_sequences` windows; ranks take every world-th window and sum.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.data.loader import VAL_STREAM, DataMismatchError, SplitDocuments, check_data_fits_model
from pipeline.data.manifest import load_manifest
from pipeline.data.packing import PackedSequences
from pipeline.eval.scoring import rank_and_world


def check_data_tokenizer(manifest, folder: Path, trained: dict | None) -> None:
    """The data must come from the tokenizer the model was trained with (as training checks on resume):
    a loss over another tokenizer's ids is a number that means nothing. `trained`: {sha256, vocab_size,
    recorded_in} from the checkpoint / export (None: nothing recorded, nothing to compare)."""
    if not trained or not trained.get("sha256"):
        return
    tok = manifest.tokenizer
    if tok.sha256 != trained["sha256"]:
        vocab = f", vocab {trained['vocab_size']}" if trained.get("vocab_size") else ""
        raise DataMismatchError(
            f"{folder / 'manifest.json'}: data tokenized with {tok.sha256[:16]}… ({tok.path}, vocab "
            f"{tok.vocab_size}), but the model was trained with tokenizer {trained['sha256'][:16]}…{vocab} "
            f"(recorded in {trained.get('recorded_in', 'the checkpoint')}): pass --data prepared with that tokenizer")


@torch.no_grad()
def validation_loss(model, data_path: str, seq_len: int, split: str = "val", micro_batch: int = 8,
                    max_sequences: int | None = None, verify: str = "size",
                    trained_tokenizer: dict | None = None) -> dict[str, float]:
    folder = Path(data_path)
    manifest = load_manifest(folder, verify=verify, open_index=False)   # SplitDocuments checks the index
    check_data_fits_model(manifest, folder, model.cfg.vocab_size, None)
    check_data_tokenizer(manifest, folder, trained_tokenizer)
    if seq_len > model.cfg.max_seq_len:
        raise ValueError(f"validation seq_len {seq_len} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
    if not manifest.split_shards(split):
        raise ValueError(f"{folder / 'manifest.json'}: no shards for split {split!r}")
    sequences = PackedSequences(SplitDocuments(folder, manifest, split), seq_len, seed=0, shuffle=False,
                                stream_id=VAL_STREAM)
    n = sequences.samples_per_epoch if max_sequences is None else min(max_sequences, sequences.samples_per_epoch)
    rank, world = rank_and_world()
    mine = np.arange(rank, n, world)
    device = model.lm_head.weight.device
    total = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), micro_batch):
        batch = sequences.batch(mine[start:start + micro_batch])
        ids = torch.from_numpy(batch["input_ids"]).to(device)
        labels = torch.from_numpy(batch["labels"]).to(device)
        logits = model.logits(ids, torch.from_numpy(batch["doc_starts"]).to(device)).float()
        loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        total += torch.stack([loss_sum.double().cpu(), (labels != -100).sum().double().cpu()])
    if world > 1:
        dist.all_reduce(total)
    loss = float(total[0] / total[1].clamp(min=1))
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(total[1]),
            "val_sequences": int(n), "seq_len": seq_len}
