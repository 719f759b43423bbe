"""TensorBoard tags (pipeline/train/tensorboard_tags.py) and the custom-scalars layout
(pipeline/train/tensorboard_layout.py), without training:

- every metric key the trainer and callbacks record today, and the keys other work adds (per-source
  validation loss and tokens, schedule changes), gets a sectioned tag; an unknown key goes to other/, never away;
- the MTP modules' router rows are labelled moe/mtp<d>/...;
- every tag of a full run is drawn by at least one chart of the layout (nothing recorded is missing from the
  first page), every chart pattern is a valid regex, and a model's absent parts get no empty category.
"""
from __future__ import annotations

import re

import pytest

from pipeline.train.tensorboard_layout import custom_scalars_layout, layout_categories
from pipeline.train.tensorboard_tags import SECTIONS, TagMap, tensorboard_tag
from tests.pipeline.train.runs import tiny_config

# Every key recorded today (step_stats, trainer, speed, validation, downstream, metrics, checkpoint, OE health)
# for the tiny model (2 trunk layers + 1 MTP module, 4 OE tables), and the ones other work adds.
KEYS = {
    "loss": "loss/total", "lm_loss": "loss/lm", "mtp_1_loss": "loss/mtp_1", "od_2_loss": "loss/od_2",
    "lb_loss": "moe/lb_loss", "z_loss": "moe/z_loss", "val_loss": "loss/val", "val_ppl": "loss/val_ppl",
    "moe/imbalance/layer_0": "moe/imbalance/layer_0", "moe/imbalance/layer_1": "moe/imbalance/layer_1",
    "moe/imbalance/layer_2": "moe/mtp1/imbalance", "moe/imbalance_max": "moe/imbalance_max",
    "moe/expert_counts/layer_2": "moe/mtp1/expert_counts",
    "oe/distinct_rows/table_0": "oe/distinct_rows/table_0", "oe/distinct_rows_mean": "oe/distinct_rows_mean",
    "oe/rows_touched/table_3": "oe/rows_touched/table_3", "oe/rows_touched": "oe/rows_touched",
    "oe/ngram_rms_ratio": "oe/ngram_rms_ratio", "oe/ngram_rms_ratio/table_1": "oe/ngram_rms_ratio/table_1",
    "oe/grad_norm": "oe/grad_norm", "oe/grad_norm/table_2": "oe/grad_norm/table_2",
    "grad_norm": "opt/grad_norm", "lr": "opt/lr", "lr_oe": "opt/lr_oe", "skipped_steps": "opt/skipped_steps",
    "tokens_seen": "data/tokens_seen", "epoch": "data/epoch",
    "step_time_s": "perf/step_time_s", "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu",
    "eta_s": "perf/eta_s", "mem_rss_gib": "perf/mem_rss_gib", "mem_cuda_max_gib": "perf/mem_cuda_max_gib",
    "val_time_s": "perf/val_time_s", "downstream_time_s": "perf/downstream_time_s",
    "downstream": "eval/downstream", "downstream/piqa": "eval/downstream/piqa",
    "checkpoint/save_s": "checkpoint/save_s", "checkpoint/bytes": "checkpoint/bytes",
    # added by other work
    "val/web/loss": "loss/val/web", "val/code/ppl": "loss/val/code/ppl", "data/web/tokens": "data/web/tokens",
    "data/web/epoch": "data/web/epoch", "schedule/phase": "opt/schedule/phase", "lr_factor": "opt/lr_factor",
    # no rule: kept, under other/
    "surprise": "other/surprise", "mystery/metric": "other/mystery/metric",
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_gets_a_sectioned_tag(key):
    tag = tensorboard_tag(key, n_layers=2)
    assert tag == KEYS[key]
    assert tag.split("/")[0] in SECTIONS


def test_without_the_model_depth_every_router_row_is_a_layer_and_the_map_memoises():
    assert tensorboard_tag("moe/imbalance/layer_2") == "moe/imbalance/layer_2"
    tag = TagMap(n_layers=1)
    assert tag("moe/imbalance/layer_2") == "moe/mtp2/imbalance" and tag("loss") == "loss/total"


def chart_patterns(cfg) -> list[str]:
    return [p for _, charts in layout_categories(cfg) for _, patterns in charts for p in patterns]


def test_every_tag_of_a_run_is_on_the_custom_scalars_page():
    cfg = tiny_config("unused", "unused", "eval.downstream_every=5")
    patterns = [re.compile(p) for p in chart_patterns(cfg)]   # each a valid regex
    histograms = {"moe/expert_counts/layer_2"}
    undrawn = [tag for key, tag in KEYS.items() if key not in histograms and key != "od_2_loss"
               and not any(p.match(tag) for p in patterns)]
    assert not undrawn, undrawn
    # ... and by a named chart, not only by the catch-all of the "Other" category
    named = [re.compile(p) for title, charts in layout_categories(cfg) for chart, ps in charts for p in ps
             if not chart.startswith("metrics no chart above draws")]
    new = ("perf/new_thing", "oe/new_thing", "loss/new", "data/new_thing")
    assert [t for t in new if any(p.match(t) for p in named)] == []      # a tag no chart was written for ...
    assert all(any(p.match(t) for p in patterns) for t in new)           # ... is still drawn, by a catch-all
    only_rest = [tag for key, tag in KEYS.items() if key not in histograms and key != "od_2_loss"
                 and not tag.startswith("other/") and not any(p.match(tag) for p in named)]
    assert not only_rest, only_rest


def test_first_category_is_the_loss_and_absent_model_parts_are_left_out():
    full = custom_scalars_layout(tiny_config("unused", "unused"))
    assert list(full)[0] == "Loss" and {"MoE balance", "Over-Encoding health", "Checkpoints"} <= set(full)
    assert list(full)[-1] == "Other" and len(full["Other"]) == 1 and "Zero-shot evaluation" not in full
    assert any("MTP" in chart for chart in full["MoE balance"])
    dense = tiny_config("unused", "unused", "model.mlp=dense", "model.dense_hidden=64",
                        "model.over_encoding.enabled=false", "model.over_decoding.mode=none", "checkpoint.every=0",
                        "checkpoint.save_at_end=false", "eval.downstream_every=5")
    layout = custom_scalars_layout(dense)
    assert "MoE balance" not in layout and "Over-Encoding health" not in layout and "Checkpoints" not in layout
    assert "Zero-shot evaluation" in layout
    assert not any("vs LM" in chart for chart in layout["Loss"])
    for charts in layout.values():
        assert all(kind == "Multiline" and tags for kind, tags in charts.values())
