"""decode(shards) == input documents, in order, for every input format and both tokenizer kinds."""
from __future__ import annotations

import csv
import gzip
import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.data.manifest import load_manifest
from tests.data_prep.conftest import decoded, expected_split, make_docs, shard_ok


def write_mixed_corpus(root) -> list[str]:
    """One folder with every supported format; returns the documents in the order data_prep must read them."""
    docs = make_docs(60, seed=7)
    root.mkdir()
    (root / "a_whole.txt").write_text(docs[0], encoding="utf-8")                        # file = one document
    (root / "b.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": d, "id": i}) + "\n"
                                                            for i, d in enumerate(docs[1:15])).encode()))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"meta": {"body": d}, "text": d}) + "\n" for d in docs[15:25]).encode()))
    pq.write_table(pa.table({"text": docs[25:40], "n": list(range(15))}), root / "d.parquet", row_group_size=4)
    (root / "e.txt.gz").write_bytes(gzip.compress(docs[40].encode()))
    with open(root / "f.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "n"), *((d, i) for i, d in enumerate(docs[41:45]))])
    import datasets
    datasets.Dataset.from_dict({"text": docs[45:60]}).save_to_disk(str(root / "g_hf"))
    return docs[:60]


@pytest.mark.parametrize("val_fraction", [0.3])
def test_every_format_roundtrips_in_order_sentencepiece(tmp_path, sp_model, val_fraction):
    docs = write_mixed_corpus(tmp_path / "in")
    out = tmp_path / "out"
    shard_ok(tmp_path / "in", "-o", out, "-t", sp_model, "--val-fraction", val_fraction, "--shard-tokens", 300)
    m = load_manifest(out, verify="full")
    assert m.dtype == "uint16" and m.tokenizer.kind == "sentencepiece" and m.tokenizer.eos_id == 2
    assert [i["format"] for i in m.inputs] == ["text", "jsonl.gzip", "jsonl.zstd", "parquet", "text.gzip",
                                               "hf:csv", "hf_disk"]
    for split in ("train", "val"):
        want = expected_split(docs, split, val_fraction)
        assert want, "the corpus must give both splits documents"
        assert decoded(out, sp_model, split) == want   # identity normalisation: exact round trip
    assert m.totals["all"]["documents"] == len(docs) == m.statistics["documents"]
    assert m.totals["train"]["shards"] > 1   # small --shard-tokens: several shards per split
    for rec in m.shards:  # no shard exceeds the target unless it holds a single oversize document
        assert rec.tokens <= 300 or rec.documents == 1


def test_olmoe_tokenizer_and_doc_split_modes(tmp_path, olmoe_tokenizer):
    paragraphs = make_docs(12, seed=3, max_paragraphs=1)
    text = "\ufeff" + "\n\n\n".join(paragraphs[:6]) + "\n\n" + "\r\n\r\n".join(paragraphs[6:]) + "\n"
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    for mode, want in (("blank-lines", paragraphs), ("none", [text[1:]])):
        out = tmp_path / mode
        shard_ok(tmp_path / "book.txt", "-o", out, "-t", olmoe_tokenizer, "--doc-split", mode, "--val-fraction", 0)
        m = load_manifest(out, verify="full")
        assert (m.tokenizer.vocab_size, m.tokenizer.eos_id, m.dtype) == (50280, 50279, "uint16")
        got = decoded(out, olmoe_tokenizer, "train")
        assert got == [unicodedata.normalize("NFC", d) for d in want]   # the tokenizer normalises to NFC
    lines = tmp_path / "lines"
    shard_ok(tmp_path / "book.txt", "-o", lines, "-t", olmoe_tokenizer, "--doc-split", "lines", "--val-fraction", 0)
    assert decoded(lines, olmoe_tokenizer, "train") == [p.rstrip("\r") for p in paragraphs]


def test_glob_and_directory_expansion_order(tmp_path, sp_model):
    docs = make_docs(6, seed=11)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):
        folder = tmp_path / "in" / ("sub" if i % 2 else "")
        (folder / f"{i:02d}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "in" / ".hidden.bin").write_bytes(b"\x00ignored")
    shard_ok(tmp_path / "in" / "**" / "*.txt", "-o", tmp_path / "g", "-t", sp_model, "--val-fraction", 0)
    by_glob = decoded(tmp_path / "g", sp_model, "train")
    assert by_glob == [docs[i] for i in (0, 2, 4, 1, 3, 5)]    # sorted paths: in/00, in/02, in/04, in/sub/01…
    shard_ok(tmp_path / "in", "-o", tmp_path / "d", "-t", sp_model, "--val-fraction", 0)
    assert decoded(tmp_path / "d", sp_model, "train") == [docs[i] for i in (0, 2, 4, 1, 3, 5)]


def test_large_vocab_uses_int32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"w{i}": i for i in range(70000)}
    vocab["<unk>"], vocab["</s>"] = 70000, 70001
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    path = tmp_path / "big.json"
    tok.save(str(path))
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"text": f"w1 w69999 w{i}"}) + "\n" for i in range(5)))
    shard_ok(tmp_path / "x.jsonl", "-o", tmp_path / "o", "-t", path, "--val-fraction", 0)
    m = load_manifest(tmp_path / "o", verify="full")
    assert (m.dtype, m.tokenizer.eos_id, m.tokenizer.vocab_size) == ("int32", 70001, 70002)
    from pipeline.data.manifest import iter_documents
    assert [d.tolist() for d in iter_documents(tmp_path / "o", "train")] == [[1, 69999, i, 70001] for i in range(5)]


def test_giant_document_is_encoded_in_pieces_without_loss(tmp_path, sp_model, olmoe_tokenizer):
    big = " ".join(make_docs(300, seed=5)).replace("\n", " ")   # one long line, ~100 kB
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": big}) + "\n")
    for tok in (sp_model, olmoe_tokenizer):
        out = tmp_path / f"o{len(tok)}"
        shard_ok(tmp_path / "big.jsonl", "-o", out, "-t", tok, "--val-fraction", 0, "--encode-piece-chars", 4096)
        m = load_manifest(out, verify="full")
        assert m.statistics["long_documents_split"] == 1 and m.totals["all"]["documents"] == 1
        assert decoded(out, tok, "train") == [unicodedata.normalize("NFC", big)]


def test_hf_dataset_dict_splits_and_load_dataset_specs(tmp_path, sp_model):
    import datasets
    docs = make_docs(9, seed=21)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": docs[:5]}),
                          "test": datasets.Dataset.from_dict({"body": docs[5:7]})}).save_to_disk(str(tmp_path / "dd"))
    shard_ok(tmp_path / "dd", "-o", tmp_path / "all", "-t", sp_model, "--text-field", "body", "--val-fraction", 0)
    assert decoded(tmp_path / "all", sp_model, "train") == docs[:7]          # every split, in stored order
    shard_ok(tmp_path / "dd", "-o", tmp_path / "test", "-t", sp_model, "--text-field", "body", "--hf-split", "test",
             "--val-fraction", 0)
    assert decoded(tmp_path / "test", sp_model, "train") == docs[5:7]
    (tmp_path / "js").mkdir()
    for i, d in enumerate(docs[7:]):
        (tmp_path / "js" / f"{i}.jsonl").write_text(json.dumps({"text": d}) + "\n")
    shard_ok(f"hf:json:{tmp_path / 'js' / '*.jsonl'}", "-o", tmp_path / "hfjson", "-t", sp_model, "--val-fraction", 0)
    assert decoded(tmp_path / "hfjson", sp_model, "train") == docs[7:]
