"""Sparse Over-Encoding table gradients (use_sparse_table_grads) give exactly the RowSparseAdam training of
the dense-gradient path, for the plain and the row-sharded lookup, while the gradient holds only looked-up
rows."""
from __future__ import annotations

import torch

from pipeline.parallel.table_optimizers import use_sparse_table_grads
from tests.helpers.multirank import run_ranks
from tests.pipeline.parallel.workers import make_batches, model_config, optimizers, seeded_model


def _train(model, ids, doc_starts, steps: int) -> tuple[list[float], torch.Tensor]:
    opts, losses, grad = optimizers(model, "row_sparse_adam"), [], None
    for step in range(steps):
        out = model(ids[step], doc_starts=doc_starts[step])
        out.loss.backward()
        grad = model.over_encoding.table.grad
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses, grad


def test_sparse_table_grads_match_dense_row_sparse_adam():
    cfg = model_config("tiny-olmoe-oe", [])
    ids, doc_starts = make_batches(cfg, steps=4, batch=2, seq=16)
    dense, sparse = seeded_model(cfg, torch.float64), seeded_model(cfg, torch.float64)
    assert use_sparse_table_grads(sparse) == 1
    dense_losses, dense_grad = _train(dense, ids, doc_starts, 4)
    sparse_losses, sparse_grad = _train(sparse, ids, doc_starts, 4)
    assert not dense_grad.is_sparse and sparse_grad.is_sparse
    assert sparse_grad.coalesce().indices().shape[1] <= cfg.over_encoding.num_tables * 2 * 16
    torch.testing.assert_close(sparse_losses, dense_losses, rtol=1e-12, atol=0)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)


def sharded_worker(rank: int, world: int) -> dict:
    from pipeline.config.parallel import ParallelConfig
    from pipeline.parallel.parallelize import parallelize
    from pipeline.parallel.process_groups import init_process_groups
    from tests.pipeline.parallel.workers import train_parallel
    cfg = model_config("tiny-olmoe-oe", [])
    ids, doc_starts = make_batches(cfg, steps=4, batch=4, seq=16)
    groups = init_process_groups(ParallelConfig(), cfg)
    dense = parallelize(seeded_model(cfg, torch.float64), groups)
    sparse = parallelize(seeded_model(cfg, torch.float64), groups)
    use_sparse_table_grads(sparse)
    dense_losses = train_parallel(dense, groups, ids, doc_starts, "row_sparse_adam")
    sparse_losses = train_parallel(sparse, groups, ids, doc_starts, "row_sparse_adam")
    return {"loss": max(abs(a - b) for a, b in zip(dense_losses, sparse_losses)),
            "params": max((a - b).abs().max().item() for a, b in zip(sparse.parameters(), dense.parameters())),
            "flag": sparse.over_encoding.sparse_grad}


def test_sharded_sparse_table_grads_match_dense():
    for result in run_ranks(2, "tests.pipeline.parallel.test_sparse_table_grads:sharded_worker"):
        assert result["flag"] is True
        assert result["loss"] < 1e-12 and result["params"] < 1e-12, result


def _lookup_grads(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparse, dense) table gradients of one OE forward + backward with repeated n-grams in the batch."""
    from pipeline.config.model import OverEncodingConfig
    from pipeline.model.over_encoding import OverEncoding
    grads = []
    for sparse in (True, False):
        torch.manual_seed(0)
        oe = OverEncoding(OverEncodingConfig(enabled=True, n=3, k=2, m=97), d_model=32, vocab_size=11)
        oe.sparse_grad = sparse
        ids = torch.randint(0, 11, (3, 40), generator=torch.Generator().manual_seed(1))   # 97-row tables: repeats
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = oe(torch.randn(3, 40, 32, generator=torch.Generator().manual_seed(2)), ids)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append(oe.table.grad)
    return grads[0], grads[1]


def test_deduped_sparse_lookup_gradient_is_coalesced_and_equals_dense():
    sparse, dense = _lookup_grads(autocast=False)
    assert sparse.is_sparse
    rows = sparse._indices()[0]                                      # sorted and distinct: RowSparseAdam's
    assert bool((rows[1:] > rows[:-1]).all())                        # fast path needs no coalesce
    assert sparse._indices().shape[1] < 2 * 4 * 3 * 40                 # one entry per distinct row looked up
    # fp32: the same per-row sums in another order -> a few ulp
    torch.testing.assert_close(sparse.to_dense(), dense, rtol=1e-6, atol=1e-7)


def test_deduped_sparse_lookup_gradient_bf16_autocast():
    sparse, dense = _lookup_grads(autocast=True)
    assert sparse.dtype == dense.dtype == torch.float32                 # fp32 table, fp32 gradient
    # both take the same bf16 projection backward; only the fp32 summation order of the row sums differs
    torch.testing.assert_close(sparse.to_dense(), dense, rtol=1e-6, atol=1e-6)
