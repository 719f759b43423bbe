"""Data loader: packing against a brute-force reference, shuffle determinism, rank slicing, resume, errors."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.run import DataConfig
from pipeline.data.indexed_dataset import ShardError
from pipeline.data.loader import DataMismatchError, SplitDocuments, TrainBatches, build_loaders, open_split
from pipeline.data.manifest import read_manifest
from pipeline.data.packing import IGNORE_INDEX, PackedSequences
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

VOCAB, EOS = 300, 299


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    train = random_documents(130, VOCAB, EOS, seed=1)
    val = random_documents(20, VOCAB, EOS, seed=2)
    write_shard_folder(folder, {"train": train, "val": val}, VOCAB, EOS, docs_per_shard=40)
    return folder, train, val


def reference_samples(docs: list[np.ndarray], order: np.ndarray, seq_len: int) -> list[dict]:
    """Per-token reference: concatenate docs in `order`, cut windows of seq_len + 1 every seq_len tokens."""
    stream, starts = [], []
    for d in order:
        for i, t in enumerate(docs[d]):
            stream.append(int(t))
            starts.append(i == 0)
    out = []
    for j in range((len(stream) - 1) // seq_len):
        w, s = stream[j * seq_len: j * seq_len + seq_len + 1], starts[j * seq_len: j * seq_len + seq_len + 1]
        labels = [w[i + 1] if not s[i + 1] else IGNORE_INDEX for i in range(seq_len)]
        out.append({"input_ids": w[:-1], "labels": labels, "doc_starts": [True] + s[1:seq_len]})
    return out


def test_packing_matches_reference_unshuffled(shards):
    folder, train, _ = shards
    m = read_manifest(folder)
    seqs = PackedSequences(SplitDocuments(folder, m, "train"), seq_len=17, seed=0, shuffle=False)
    ref = reference_samples(train, np.arange(len(train)), 17)
    assert seqs.samples_per_epoch == len(ref)
    for j in range(len(ref)):
        got = seqs[j]
        for key in ("input_ids", "labels", "doc_starts"):
            assert got[key].tolist() == ref[j][key], (j, key)
    # The next epoch (unshuffled) repeats the first.
    assert seqs[len(ref)]["input_ids"].tolist() == ref[0]["input_ids"]


def test_shuffle_is_a_seeded_permutation_of_packed_documents(shards):
    folder, train, _ = shards
    m = read_manifest(folder)
    docs = SplitDocuments(folder, m, "train")
    a = PackedSequences(docs, seq_len=16, seed=5)
    b = PackedSequences(docs, seq_len=16, seed=5)
    c = PackedSequences(docs, seq_len=16, seed=6)
    n = a.samples_per_epoch
    ea = [a[i]["input_ids"].tolist() for i in range(n)]
    assert ea == [b[i]["input_ids"].tolist() for i in range(n)]
    assert ea != [c[i]["input_ids"].tolist() for i in range(n)]
    ref = reference_samples(train, a.index.get(0).doc_order, 16)
    assert sorted(map(tuple, ea)) == sorted(tuple(r["input_ids"]) for r in ref)  # every window once
    # Epoch 1 is a different order of the same documents.
    e1 = [a[n + i]["input_ids"].tolist() for i in range(n)]
    assert e1 != ea


def test_rank_slices_cover_the_global_batch_in_order(shards):
    folder, _, _ = shards
    m = read_manifest(folder)
    seqs = PackedSequences(SplitDocuments(folder, m, "train"), seq_len=16, seed=3)
    one = TrainBatches(seqs, global_batch=8, micro_batch=2, dp_rank=0, dp_size=1, tokenizer_sha256="x")
    two = [TrainBatches(seqs, global_batch=8, micro_batch=2, dp_rank=r, dp_size=2, tokenizer_sha256="x")
           for r in range(2)]
    for _ in range(3):
        single = one.next_step()                      # 4 micro-batches of 2
        per_rank = [t.next_step() for t in two]       # 2 micro-batches of 2 on each rank
        assert len(single) == 4 and all(len(p) == 2 for p in per_rank)
        # micro-step m of rank r holds chunk m * 2 + r of the step
        interleaved = [per_rank[r][m] for m in range(2) for r in range(2)]
        for x, y in zip(single, interleaved):
            np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
            np.testing.assert_array_equal(x["labels"], y["labels"])


def test_resume_position_is_exact(shards):
    folder, _, _ = shards
    cfg = DataConfig(path=str(folder), seq_len=64)
    straight, _, _ = build_loaders(cfg, VOCAB, seed=1, global_batch=4, micro_batch=2, eval_batches=1,
                                   dp_rank=0, dp_size=1)
    first = [straight.next_step() for _ in range(40)]   # crosses an epoch boundary
    resumed, _, _ = build_loaders(cfg, VOCAB, seed=1, global_batch=4, micro_batch=2, eval_batches=1,
                                  dp_rank=0, dp_size=1)
    part = [resumed.next_step() for _ in range(17)]
    state = resumed.state_dict()
    again, _, _ = build_loaders(cfg, VOCAB, seed=1, global_batch=4, micro_batch=2, eval_batches=1,
                                dp_rank=0, dp_size=1)
    again.load_state_dict(state)
    rest = part + [again.next_step() for _ in range(23)]
    assert straight.epoch > 1
    for a, b in zip(first, rest):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
    other_seed, _, _ = build_loaders(cfg, VOCAB, seed=2, global_batch=4, micro_batch=2, eval_batches=1,
                                     dp_rank=0, dp_size=1)
    with pytest.raises(DataMismatchError, match="seed=1"):
        other_seed.load_state_dict(state)


def test_validation_batches_are_fixed(shards):
    folder, _, val = shards
    cfg = DataConfig(path=str(folder), seq_len=16)
    _, v, _ = build_loaders(cfg, VOCAB, seed=1, global_batch=4, micro_batch=2, eval_batches=3, dp_rank=0,
                            dp_size=1)
    a, b = list(v[0].batches), list(v[0].batches)
    assert len(a) == 3
    ref = reference_samples(val, np.arange(len(val)), 16)
    assert a[0]["input_ids"][0].tolist() == ref[0]["input_ids"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])


def test_vocab_larger_than_model_is_a_clear_error(shards):
    folder, _, _ = shards
    with pytest.raises(DataMismatchError, match=r"manifest.json: tokenizer vocab_size 300 exceeds .*model.vocab_size 256"):
        open_split(folder, "train", "size", model_vocab_size=256)


def test_tokenizer_mismatch_is_a_clear_error(shards):
    folder, _, _ = shards
    with pytest.raises(DataMismatchError, match="data.tokenizer_sha256"):
        open_split(folder, "train", "size", model_vocab_size=VOCAB, expected_tokenizer_sha256="cd" * 32)


def test_truncated_shard_fails_at_start(tmp_path):
    folder = write_shard_folder(tmp_path / "s", {"train": random_documents(30, VOCAB, EOS, seed=4)}, VOCAB, EOS)
    with open(folder / "train_00000.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ShardError, match="train_00000.bin"):
        open_split(folder, "train", "size", model_vocab_size=VOCAB)


def test_too_little_data_for_one_sequence(tmp_path):
    folder = write_shard_folder(tmp_path / "s", {"train": random_documents(2, VOCAB, EOS, seed=4, max_len=5)},
                                VOCAB, EOS)
    m = read_manifest(folder)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        PackedSequences(SplitDocuments(folder, m, "train"), seq_len=512, seed=0)


def test_split_shorter_than_one_sequence_names_folder_and_key(tmp_path):
    folder = write_shard_folder(tmp_path / "s", {"train": random_documents(2, VOCAB, EOS, seed=4, max_len=5)},
                                VOCAB, EOS)
    with pytest.raises(DataMismatchError, match=r"s: train split has .* fewer than one sequence .*data.seq_len=512"):
        build_loaders(DataConfig(path=str(folder), seq_len=512), VOCAB, seed=0, global_batch=2, micro_batch=2,
                      eval_batches=1, dp_rank=0, dp_size=1)


def test_validation_windows_do_not_depend_on_the_world_size(shards):
    """eval.batches micro-batches in total, split over the ranks; ranks without a real one left score padding
    (all labels ignored) so that every rank runs the same number of forwards."""
    folder, _, _ = shards
    cfg = DataConfig(path=str(folder), seq_len=16)

    def scored(dp: int) -> list[list[int]]:
        rows = []
        for rank in range(dp):
            _, v, _ = build_loaders(cfg, VOCAB, seed=1, global_batch=4 * dp, micro_batch=2, eval_batches=3,
                                    dp_rank=rank, dp_size=dp)
            batches = list(v[0].batches)
            assert len(batches) == -(-3 // dp)
            rows += [ids.tolist() for b in batches for ids, lab in zip(b["input_ids"], b["labels"])
                     if (lab != -100).any()]
        return sorted(rows)

    assert scored(1) == scored(2) == scored(3) and len(scored(1)) == 6
