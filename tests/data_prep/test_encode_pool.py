"""The ordered encoder: results in input order, and a bounded number of chunks in flight (flat memory)."""
from __future__ import annotations

import numpy as np

from data_prep.encode_pool import ChunkEncoder, EncodeSettings, OrderedEncoder
from pipeline.data.tokenizer import TokenizerSpec
from tests.data_prep.conftest import make_docs


def test_results_in_order_and_bounded_read_ahead(sp_model):
    docs = make_docs(400, seed=8)
    settings = EncodeSettings(TokenizerSpec(sp_model), "uint16", piece_chars=1 << 20)
    expected = ChunkEncoder(settings)(docs)
    pulled = []

    def source(per_chunk=4):
        for start in range(0, len(docs), per_chunk):
            pulled.extend(range(start, min(start + per_chunk, len(docs))))
            yield list(range(start, start + per_chunk))[: len(docs) - start], docs[start:start + per_chunk]

    workers, got_tokens, got_lengths, max_ahead = 2, [], [], 0
    with OrderedEncoder(settings, workers) as enc:
        consumed = 0
        for meta, tokens, lengths in enc.results(source()):
            assert meta == list(range(consumed, consumed + len(meta)))   # strictly in input order
            consumed += len(meta)
            max_ahead = max(max_ahead, len(pulled) - consumed)
            got_tokens.append(tokens)
            got_lengths.append(lengths)
    assert consumed == len(docs)
    # At most 2N+2 chunks of 4 documents are submitted but not yet consumed.
    assert max_ahead <= (2 * workers + 2) * 4
    assert np.array_equal(np.concatenate(got_tokens), expected[0])
    assert np.array_equal(np.concatenate(got_lengths), expected[1])


def test_long_documents_in_pieces_keep_order_and_eos(sp_model):
    docs = ["short one", " ".join(make_docs(40, seed=1)), "another short", "x" * 5000]
    enc = ChunkEncoder(EncodeSettings(TokenizerSpec(sp_model), "uint16", piece_chars=1024))
    tokens, lengths = enc(docs)
    assert lengths.size == 4 and tokens.size == lengths.sum()
    ends = np.cumsum(lengths) - 1
    assert (tokens[ends] == enc.eos).all()
    pieces = np.split(tokens, np.cumsum(lengths)[:-1])
    assert [enc.tokenizer.decode(p[:-1].tolist()) for p in pieces] == docs
