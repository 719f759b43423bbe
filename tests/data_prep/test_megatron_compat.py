"""Shards written by `data_prep shard` open with megatron-core's IndexedDataset and give the same documents."""
from __future__ import annotations

import json
import warnings

import numpy as np

from pipeline.data.manifest import iter_documents, load_manifest
from tests.data_prep.conftest import make_docs, shard_ok


def test_megatron_indexed_dataset_reads_data_prep_shards(tmp_path, olmoe_tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(120, seed=9)), encoding="utf-8")
    out = tmp_path / "out"
    shard_ok(corpus, "-o", out, "-t", olmoe_tokenizer, "--shard-tokens", 3000, "--val-fraction", 0.2)
    m = load_manifest(out, verify="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    for split in ("train", "val"):
        ours = [d.tolist() for d in iter_documents(out, split)]
        theirs = []
        for rec in m.split_shards(split):
            ds = IndexedDataset(str(out / rec.prefix))
            assert ds.index.dtype == np.uint16 and len(ds) == rec.documents
            assert ds.document_indices.tolist() == list(range(rec.documents + 1))
            theirs.extend(ds[i].tolist() for i in range(len(ds)))
        assert theirs == ours and len(ours) > 0
        assert all(doc[-1] == m.tokenizer.eos_id for doc in theirs)
