"""Single-purpose checks: RowSparseAdam against torch.optim.SparseAdam; expert-parallel MoE with a rank
and experts receiving zero tokens; layout validation errors."""
from __future__ import annotations

import pytest
import torch

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.config.parallel import ParallelConfig
from pipeline.parallel.process_groups import check_layout
from pipeline.parallel.table_optimizers import RowSparseAdam, build_table_optimizer
from tests.helpers.multirank import run_ranks


def test_row_sparse_adam_matches_torch_sparse_adam_and_skips_untouched_rows():
    torch.manual_seed(0)
    w = torch.randn(20, 4, dtype=torch.float64)
    dense, sparse = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours, ref = RowSparseAdam([dense], lr=0.01, betas=(0.9, 0.99)), torch.optim.SparseAdam([sparse], lr=0.01, betas=(0.9, 0.99))
    for step in range(5):
        rows = torch.tensor([step, 3, 7 + step])
        emb_grad = torch.randn(3, 4, dtype=torch.float64)
        dense.grad = torch.zeros_like(w).index_add_(0, rows, emb_grad)
        sparse.grad = torch.sparse_coo_tensor(rows[None], emb_grad, w.shape)
        before = dense.detach().clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(dense.detach(), sparse.detach(), rtol=1e-12, atol=1e-12)
        untouched = torch.ones(20, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(dense.detach()[untouched], before[untouched])
    with pytest.raises(ValueError, match="parallel.table_optimizer"):
        build_table_optimizer("sgd", [dense], lr=0.1)


def moe_zero_tokens(rank: int, world: int) -> dict:
    from pipeline.model.moe import MoE
    from pipeline.parallel.expert_parallel import ExpertParallelMoE
    from pipeline.parallel.shard_info import local_slice
    torch.manual_seed(0)
    dense = MoE(d_model=8, n_experts=4, top_k=2, hidden=16).double()
    with torch.no_grad():   # route every token to experts 0 and 1 (rank 0's): experts 2, 3 and rank 1 get none
        dense.router.weight.zero_()
        dense.router.weight[0, 0] = dense.router.weight[1, 0] = 5.0
    x_all = torch.randn(6, 8, dtype=torch.float64).abs()
    ep = ExpertParallelMoE(MoE(8, 4, 2, 16).double(), torch.distributed.group.WORLD)
    ep.load_state_dict({k: local_slice(v, dict(ep.named_parameters())[k]) for k, v in dense.state_dict().items()})
    mine = x_all if rank == 0 else x_all[:0]          # rank 1 sends zero tokens
    y_ref, _ = dense(x_all)
    y_ref.square().sum().backward()
    y, stats = ep(mine)
    y.square().sum().backward()
    errs = {n: (p.grad - local_slice(dict(dense.named_parameters())[n].grad, p)).abs().max().item()
            for n, p in ep.named_parameters() if "experts" in n}
    return {"out": (y - y_ref[:len(mine)]).abs().max().item() if len(mine) else 0.0, "grads": errs,
            "counts": stats.counts.tolist()}


def test_expert_parallel_with_zero_tokens_for_a_rank_and_experts():
    r0, r1 = run_ranks(2, "tests.pipeline.parallel.test_units:moe_zero_tokens", timeout=120)
    assert r0["counts"] == [6, 6, 0, 0] and r1["counts"] == [0, 0, 0, 0]
    for r in (r0, r1):
        assert r["out"] < 1e-12 and max(r["grads"].values()) < 1e-12, r


def test_layout_errors_name_the_key():
    cfg = load_model_config("configs/model/tiny-olmoe.yaml")
    with pytest.raises(ConfigError, match="parallel.tp: 3 does not divide the world size 4"):
        check_layout(ParallelConfig(tp=3), 4, cfg)
    with pytest.raises(ConfigError, match="parallel.ep: 3 does not divide the data-parallel size"):
        check_layout(ParallelConfig(ep=3), 4, cfg)
    with pytest.raises(ConfigError, match="parallel.ep"):
        check_layout(ParallelConfig(tp=2, ep=2), 4, cfg)
    with pytest.raises(ConfigError, match="n_experts"):
        check_layout(ParallelConfig(ep=16), 16, cfg)
