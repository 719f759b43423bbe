"""OE health metrics (pipeline/train/oe_health.py):

- the module-level switches: a training forward marks exactly the looked-up rows and records the norm sums,
  an eval forward marks and records nothing;
- per-table sums over a shard whose boundaries cut through tables (dense and sparse gradients agree);
- 2 gloo ranks with the table row-sharded (all-to-all lookups, each owner marks the rows it serves) report
  the same touched-row fractions as one process on the same data, exactly, and the same gradient norms and
  norm ratios (to float tolerance); also with sparse table gradients (row_sparse_adam). Rank 0's start-of-run
  summary names the layout and the rows it holds.
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.config.model import OverEncodingConfig
from pipeline.model.over_encoding import OverEncoding
from pipeline.train.oe_health import TableShard, gradient_sq_per_table, health_metrics
from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, read_metrics, train_in_process

QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", "train.max_steps=6", "log.every=3",
         "checkpoint.every=0", "checkpoint.save_at_end=false"]
HEALTH = ("oe/rows_touched", "oe/ngram_rms_ratio", "oe/grad_norm")


def test_training_forward_marks_the_looked_up_rows_and_eval_does_not():
    torch.manual_seed(0)
    oe = OverEncoding(OverEncodingConfig(enabled=True, n=3, k=2, m=101), d_model=32, vocab_size=50)
    ids = torch.randint(0, 50, (2, 12))
    emb = torch.randn(2, 12, 32)
    oe.touched_rows = torch.zeros(oe.table.shape[0], dtype=torch.bool)
    oe.norm_probe = []
    oe.eval()
    oe(emb, ids)
    assert not oe.touched_rows.any() and oe.norm_probe == []
    oe.train()
    _, table_ids = oe(emb, ids)
    rows = (table_ids + oe.row_offsets.view(-1, 1, 1)).unique()
    assert torch.equal(oe.touched_rows.nonzero().flatten(), rows)
    (stats,) = oe.norm_probe
    tok, ngram, summed, per_table = stats[0], stats[1], stats[2], stats[3:]
    assert math.isclose(float(tok), float(emb.double().square().sum()), rel_tol=1e-6)
    assert math.isclose(float(ngram), float(summed))            # no output norm, scale 1
    assert per_table.shape == (4,) and (per_table > 0).all()


def test_per_table_sums_over_a_shard_that_cuts_through_tables():
    rows = [5, 7, 9]                          # global rows 0-4 | 5-11 | 12-20
    shard = TableShard(rows, start=3, end=14, copies=1)
    assert [(s.start, s.stop) for s in shard.local_slices()] == [(0, 2), (2, 9), (9, 11)]
    none = TableShard(rows, 0, 5, 1).local_slices()[2]                   # a table this rank holds none of
    assert none.start == none.stop
    torch.manual_seed(1)
    grad = torch.zeros(11, 4)
    hit = torch.tensor([0, 1, 4, 9, 10])
    grad[hit] = torch.randn(5, 4)
    dense = gradient_sq_per_table(grad, shard)
    sparse = gradient_sq_per_table(torch.sparse_coo_tensor(hit.unsqueeze(0), grad[hit], grad.shape,
                                                            check_invariants=True), shard)
    assert torch.allclose(dense, sparse)
    assert torch.allclose(dense, torch.stack([grad[:2].double().square().sum(), grad[2:9].double().square().sum(),
                                              grad[9:].double().square().sum()]))
    counts = torch.cat([torch.tensor([5.0, 0, 9]), dense, torch.tensor([4.0, 1, 1, 0.25, 0.25, 0.5])]).double()
    m = health_metrics(counts, shard)
    assert m["oe/rows_touched/table_0"] == 1.0 and m["oe/rows_touched"] == 14 / 21
    assert m["oe/ngram_rms_ratio"] == 0.5 and m["oe/ngram_rms_ratio/table_2"] == pytest.approx(0.5 * math.sqrt(0.5))


def worker(rank, world, shards, root, extra):
    train_in_process(shards, f"{root}/world{world}", *QUIET, *extra)


def health_records(run_dir) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(HEALTH)} for r in read_metrics(run_dir)}


@pytest.mark.multirank
@pytest.mark.parametrize("extra", [[], ["parallel.table_optimizer=row_sparse_adam"]], ids=["dense", "sparse"])
def test_two_sharded_ranks_report_what_one_process_reports(tmp_path, extra):
    shards = make_shards(tmp_path / "shards")
    args = {"shards": str(shards), "root": str(tmp_path), "extra": extra}
    run_ranks(1, "tests.pipeline.train.test_oe_health:worker", args, timeout=180)
    run_ranks(2, "tests.pipeline.train.test_oe_health:worker", args, timeout=240)
    one, two = health_records(tmp_path / "world1"), health_records(tmp_path / "world2")
    assert sorted(one) == sorted(two) == [3, 6]
    for step in one:
        assert one[step].keys() == two[step].keys() and len(one[step]) == 3 * (1 + 4)
        for key, value in one[step].items():
            if key.startswith("oe/rows_touched"):
                assert two[step][key] == value, (step, key)     # the same rows, counted once each
            else:
                assert two[step][key] == pytest.approx(value, rel=1e-4), (step, key)
    assert 0 < one[3]["oe/rows_touched"] < one[6]["oe/rows_touched"] < 1
    summary = (tmp_path / "world2" / "summary.txt").read_text()     # rank 0's start-of-run summary
    assert "world 2 = dp 2 x tp 1" in summary and "row-sharded over the 2 dp ranks (8,204 rows on this rank)" in summary
