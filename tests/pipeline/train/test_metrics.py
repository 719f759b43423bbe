"""metrics.jsonl and TensorBoard hold every listed scalar (read back with EventAccumulator): metrics.jsonl
under the trainer's keys, TensorBoard under the section tags of pipeline/train/tensorboard_tags.py, in the
event folder named after run_dir, with the custom-scalars layout; the start-of-run summary is saved."""
from __future__ import annotations

import math

from tests.helpers.multirank import run_ranks
from tests.pipeline.train.runs import make_shards, read_metrics, train_in_process

REQUIRED = ["loss", "lm_loss", "mtp_1_loss", "lb_loss", "z_loss", "lr", "lr_oe", "grad_norm", "tokens_per_s",
            "step_time_s", "mfu", "mem_rss_gib", "moe/imbalance/layer_0", "moe/imbalance/layer_1",
            "moe/imbalance/layer_2", "moe/imbalance_max", "oe/distinct_rows/table_0", "oe/distinct_rows/table_3",
            "tokens_seen"]
VAL = ["val_loss", "val_ppl"]
OE_HEALTH = ["oe/rows_touched", "oe/rows_touched/table_0", "oe/rows_touched/table_3", "oe/ngram_rms_ratio",
             "oe/ngram_rms_ratio/table_0", "oe/grad_norm", "oe/grad_norm/table_3"]
# key -> TensorBoard tag, for the keys above (the MTP module's router row is labelled as such)
TAGS = {"loss": "loss/total", "lm_loss": "loss/lm", "mtp_1_loss": "loss/mtp_1", "lb_loss": "moe/lb_loss",
        "z_loss": "moe/z_loss", "lr": "opt/lr", "lr_oe": "opt/lr_oe", "grad_norm": "opt/grad_norm",
        "tokens_per_s": "perf/tokens_per_s", "step_time_s": "perf/step_time_s", "mfu": "perf/mfu",
        "mem_rss_gib": "perf/mem_rss_gib", "moe/imbalance/layer_0": "moe/imbalance/layer_0",
        "moe/imbalance/layer_1": "moe/imbalance/layer_1", "moe/imbalance/layer_2": "moe/mtp1/imbalance",
        "moe/imbalance_max": "moe/imbalance_max", "oe/distinct_rows/table_0": "oe/distinct_rows/table_0",
        "oe/distinct_rows/table_3": "oe/distinct_rows/table_3", "tokens_seen": "data/tokens_seen",
        "val_loss": "loss/val", "val_ppl": "loss/val_ppl", **{k: k for k in OE_HEALTH}}


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
        missing = [k for k in REQUIRED + OE_HEALTH if k not in r]
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

    # OE health: fractions grow, ratios and norms are positive and finite
    touched = [r["oe/rows_touched/table_0"] for r in records]
    assert 0 < touched[0] <= touched[-1] <= 1 and touched == sorted(touched)
    assert all(0 < r["oe/ngram_rms_ratio"] < 10 and 0 < r["oe/grad_norm"] < r["grad_norm"] for r in records)

    tb = run_dir / "tensorboard" / "run"     # the run is named after run_dir in TensorBoard
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {TAGS[k] for k in REQUIRED + VAL + OE_HEALTH}
    assert want <= tags, sorted(want - tags)
    assert all(t.split("/")[0] in ("loss", "moe", "oe", "perf", "opt", "data") for t in tags), sorted(tags)
    assert [e.step for e in acc.Scalars("loss/total")] == [2, 3, 4, 6]
    assert all(math.isclose(e.value, x["loss"], rel_tol=1e-6) for e, x in zip(acc.Scalars("loss/total"), records))
    hist = acc.Histograms("moe/expert_counts/layer_0")
    assert [h.step for h in hist] == [2, 4, 6]
    counts = hist[-1].histogram_value
    assert len(counts.bucket) == 8 and counts.num == sum(counts.bucket)  # one bucket per expert
    assert "moe/mtp1/expert_counts" in acc.Tags()["histograms"]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]     # the layout (tested in test_tensorboard_layout)

    summary = (run_dir / "summary.txt").read_text()
    for line in ("parameters      total", "memory / rank", "data            source", "layout          world 1"):
        assert line in summary, summary
