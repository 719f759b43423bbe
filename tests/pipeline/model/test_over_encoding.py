import pytest
import torch

from pipeline.config.model import OverEncodingConfig
from pipeline.model.over_encoding import OverEncoding, ngram_table_ids


def reference_ids(tokens, vocab, n, k, m, starts=()):
    """Plain Python big-int version of Alg. 1 (one row), resetting the context at `starts`."""
    out = []
    for t in range(k * (n - 1)):
        order, mod = 2 + t // k, m + 2 * t
        row = []
        for i in range(len(tokens)):
            start = max([s for s in (0, *starts) if s <= i])
            g = sum((tokens[i - j] if i - j >= start else 0) * vocab ** j for j in range(order))
            row.append(g % mod)
        out.append(row)
    return out


def test_hand_computed_values_and_doc_reset():
    x = torch.tensor([[3, 1, 4, 1, 5]])
    ids = ngram_table_ids(x, vocab_size=10, n=3, k=1, m=1000)
    assert ids.shape == (2, 1, 5)
    assert ids[0, 0].tolist() == [3, 31, 14, 41, 15]          # 2-grams: x_i + 10 x_{i-1}, mod 1000
    assert ids[1, 0].tolist() == [3, 31, 314, 141, 415]       # 3-grams mod 1002
    starts = torch.tensor([[True, False, False, True, False]])
    ids = ngram_table_ids(x, 10, 3, 1, 1000, doc_starts=starts)
    assert ids[0, 0].tolist() == [3, 31, 14, 1, 15]
    assert ids[1, 0].tolist() == [3, 31, 314, 1, 15]


def test_moduli_differ_per_table():
    x = torch.tensor([[7, 8, 9, 6]])
    ids = ngram_table_ids(x, vocab_size=10, n=2, k=3, m=5)    # three 2-gram tables, moduli 5, 7, 9
    g = [7, 78, 89, 96]                                       # x_i + 10 x_{i-1}
    assert ids[:, 0].tolist() == [[v % 5 for v in g], [v % 7 for v in g], [v % 9 for v in g]]


@pytest.mark.parametrize("vocab,m", [(100_000, 12_800_000), (10**12, 3_000_000_000), (50280, 64 * 50280 + 1)])
def test_n4_large_vocab_no_overflow(vocab, m):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (2, 13), generator=g, dtype=torch.long)
    x[0, :4] = vocab - 1                                        # extreme ids: g_4 ~ V^4 overflows int64
    starts = torch.zeros(2, 13, dtype=torch.bool)
    starts[1, 5] = starts[1, 9] = True
    ids = ngram_table_ids(x, vocab, n=4, k=2, m=m, doc_starts=starts)
    assert ids.shape == (6, 2, 13) and ids.dtype == torch.long
    for b in range(2):
        s = [i for i in range(13) if starts[b, i]]
        assert ids[:, b].tolist() == reference_ids(x[b].tolist(), vocab, 4, 2, m, s)
    assert ids.min() >= 0
    assert all(int(ids[t].max()) < m + 2 * t for t in range(6))


def _module(output_norm=False, scale=1.0):
    cfg = OverEncodingConfig(enabled=True, n=3, k=2, m=53, output_norm=output_norm, output_scale=scale)
    torch.manual_seed(0)
    oe = OverEncoding(cfg, d_model=16, vocab_size=11)
    torch.nn.init.normal_(oe.table)
    return oe


def test_forward_is_mean_of_unigram_and_projected_tables():
    oe = _module()
    x = torch.randint(0, 11, (2, 9))
    tok = torch.randn(2, 9, 16)
    out, ids = oe(tok, x)
    d_t = 4
    expected = tok.clone()
    offset = 0
    for t, rows in enumerate(oe.table_rows):
        e_t = oe.table[offset:offset + rows][ids[t]]                    # [B, S, d_t]
        w_t = oe.proj.weight[:, t * d_t:(t + 1) * d_t]                 # W_t: d_t -> D
        expected = expected + e_t @ w_t.t()
        offset += rows
    torch.testing.assert_close(out, expected / 5, rtol=1e-6, atol=1e-6)


def test_every_table_and_projection_gets_gradient():
    oe = _module(output_norm=True, scale=2.0)
    out, ids = oe(torch.randn(2, 9, 16), torch.randint(0, 11, (2, 9)))
    out.square().sum().backward()
    offset = 0
    for t, rows in enumerate(oe.table_rows):
        seg = oe.table.grad[offset:offset + rows]
        touched = ids[t].unique()
        assert seg[touched].abs().sum(-1).gt(0).all(), f"table {t} rows without gradient"
        untouched = torch.ones(rows, dtype=torch.bool)
        untouched[touched] = False
        assert seg[untouched].abs().sum() == 0                        # only looked-up rows move
        assert oe.proj.weight.grad[:, t * 4:(t + 1) * 4].abs().sum() > 0, f"projection {t} without gradient"
        offset += rows


def test_table_is_one_marked_parameter_with_offsets():
    oe = _module()
    names = dict(oe.named_parameters())
    assert names["table"].shape == (53 + 55 + 57 + 59, 4) and names["table"]._oe_table
    assert oe.row_offsets.tolist() == [0, 53, 108, 165]


def test_orders_subset_serves_only_the_named_orders():
    """Hierarchy ablation "1+3": k tables of 3-grams only, moduli m, m+2, ... as usual."""
    x = torch.tensor([[3, 1, 4, 1, 5]])
    ids = ngram_table_ids(x, vocab_size=10, n=3, k=2, m=1000, orders=[3])
    assert ids.shape == (2, 1, 5)
    assert ids[0, 0].tolist() == [3, 31, 314, 141, 415]            # 3-grams mod 1000
    assert ids[1, 0].tolist() == [3, 31, 314, 141, 415]            # 3-grams mod 1002 (all < 1000 here)
    cfg = OverEncodingConfig(enabled=True, n=3, k=2, m=53, orders=[3])
    assert cfg.num_tables == 2 and cfg.table_orders() == [3]


def test_without_unigram_the_token_embedding_is_ignored():
    cfg = OverEncodingConfig(enabled=True, n=2, k=1, m=53, unigram=False)
    oe = OverEncoding(cfg, d_model=16, vocab_size=11)
    x = torch.randint(0, 11, (2, 9))
    out_a, _ = oe(torch.randn(2, 9, 16), x)
    out_b, ids = oe(torch.randn(2, 9, 16), x)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(out_a, oe.proj(oe.table[ids[0]]))   # one table: the mean is the table itself


def test_vocab_multiple_is_an_error_unless_allowed_for_the_ablation():
    from pipeline.config.base import ConfigError
    with pytest.raises(ConfigError):
        OverEncodingConfig(enabled=True, n=2, k=1, m=64 * 11).check_against_vocab(11)
    OverEncodingConfig(enabled=True, n=2, k=1, m=64 * 11, allow_vocab_multiple=True).check_against_vocab(11)
    with pytest.raises(ConfigError, match="orders"):
        OverEncodingConfig(enabled=True, n=3, k=1, m=53, orders=[4]).validate()
