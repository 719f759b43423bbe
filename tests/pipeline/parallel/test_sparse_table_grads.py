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
