"""metrics.jsonl and TensorBoard hold every listed scalar (read back with EventAccumulator)."""
from __future__ import annotations

import math

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, read_metrics, train_in_process

REQUIRED = ["loss", "lm_loss", "mtp_1_loss", "lb_loss", "z_loss", "lr", "lr_oe", "grad_norm", "tokens_per_s",
            "step_time_s", "mfu", "mem_rss_gib", "moe/imbalance/layer_0", "moe/imbalance/layer_1",
            "moe/imbalance/layer_2", "moe/imbalance_max", "oe/distinct_rows/table_0", "oe/distinct_rows/table_3",
            "tokens_seen"]
VAL = ["val_loss", "val_ppl"]


def worker(rank, world, shards, run_dir):
    train_in_process(shards, run_dir, "train.max_steps=6", "eval.every=3", "log.every=2", "log.histogram_every=2",
                     "checkpoint.every=0", "checkpoint.save_at_end=false")


def test_jsonl_and_tensorboard_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards, run_dir = make_shards(tmp_path / "shards"), tmp_path / "run"
    run_ranks(1, "tests.pipeline.train.test_metrics:worker", {"shards": str(shards), "run_dir": str(run_dir)},
              timeout=120)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 3, 4, 6]  # log every 2, eval at 3 and 6
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (r["step"], missing)
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["moe/imbalance/layer_0"] >= 1.0
        assert 1 <= r["oe/distinct_rows/table_0"] <= 2 * 2 * 32  # at most the step's token count
    val = {r["step"]: r for r in records if "val_loss" in r}
    assert sorted(val) == [3, 6] and all(math.isclose(v["val_ppl"], math.exp(v["val_loss"])) for v in val.values())
    # loss = lm + 0.1 mtp + 0.01 lb + 0.001 z (tiny-olmoe-ot)
    r = records[-1]
    assert math.isclose(r["loss"], r["lm_loss"] + 0.1 * r["mtp_1_loss"] + 0.01 * r["lb_loss"] + 0.001 * r["z_loss"],
                        rel_tol=1e-5)

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(REQUIRED + VAL) <= tags, sorted(set(REQUIRED + VAL) - tags)
    assert [e.step for e in acc.Scalars("loss")] == [2, 3, 4, 6]
    assert all(math.isclose(e.value, x["loss"], rel_tol=1e-6) for e, x in zip(acc.Scalars("loss"), records))
    hist = acc.Histograms("moe/expert_counts/layer_0")
    assert [h.step for h in hist] == [2, 4, 6]
    counts = hist[-1].histogram_value
    assert len(counts.bucket) == 8 and counts.num == sum(counts.bucket)  # one bucket per expert
