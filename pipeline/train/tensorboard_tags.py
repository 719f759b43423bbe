"""Metric key (metrics.jsonl, console) -> TensorBoard tag: every tag is filed under a section, so TensorBoard
groups them (`loss/`, `moe/`, `oe/`, `perf/`, `opt/`, `data/`, `eval/`, `checkpoint/`, and `other/` for
keys no rule knows) and the custom-scalars layout (tensorboard_layout.py) can select them by pattern.

Only TensorBoard tags are renamed: metrics.jsonl keeps the keys the trainer and callbacks record, because
experiments/report, the tests and users' scripts read those. A key no rule knows is never dropped: one whose
first segment is already a section keeps its name, any other goes to `other/<key>` (visible, and charted by
the layout's "Other" category) until a rule here files it.

    loss, lm_loss                    -> loss/total, loss/lm
    mtp_<d>_loss, od_<j>_loss        -> loss/mtp_<d>, loss/od_<j>          (over-decoding)
    val_loss, val_ppl                -> loss/val, loss/val_ppl
    val/<source>/loss                -> loss/val/<source>                  (per-source validation)
    val/<source>/<x>                 -> loss/val/<source>/<x>
    lb_loss, z_loss                  -> moe/lb_loss, moe/z_loss
    moe/<stat>/layer_<l>             -> unchanged for trunk layers l < n_layers;
                                        moe/mtp<d>/<stat> for the MTP module d = l - n_layers + 1
    lr, lr_<group>, grad_norm, skipped_steps, schedule/<x> -> opt/...
    step_time_s, tokens_per_s, mfu, eta_s, mem_*, *_time_s -> perf/...
    tokens_seen, epoch               -> data/tokens_seen, data/epoch       (data/<source>/... unchanged)
    downstream, downstream/<task>    -> eval/downstream, eval/downstream/<task>
"""
from __future__ import annotations

import re

SECTIONS = ("loss", "moe", "oe", "perf", "opt", "data", "eval", "checkpoint", "other")

EXACT = {
    "loss": "loss/total", "lm_loss": "loss/lm", "val_loss": "loss/val", "val_ppl": "loss/val_ppl",
    "lb_loss": "moe/lb_loss", "z_loss": "moe/z_loss",
    "grad_norm": "opt/grad_norm", "skipped_steps": "opt/skipped_steps",
    "step_time_s": "perf/step_time_s", "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu",
    "eta_s": "perf/eta_s",
    "tokens_seen": "data/tokens_seen", "epoch": "data/epoch",
    "downstream": "eval/downstream",
}
_HEAD_LOSS = re.compile(r"^((?:mtp|od)_\d+)_loss$")          # over-decoding terms (step_stats.loss_metric_name)
_MOE_LAYER = re.compile(r"^moe/(.+)/layer_(\d+)$")           # per router layer: trunk, then MTP modules
_VAL_SOURCE = re.compile(r"^val/([^/]+)/loss$")


def tensorboard_tag(key: str, n_layers: int | None = None) -> str:
    """The TensorBoard tag of metric `key`. `n_layers`: the model's trunk layers (router rows >= n_layers are
    the MTP modules'); None: every router layer is labelled as a trunk layer."""
    if key in EXACT:
        return EXACT[key]
    if m := _HEAD_LOSS.match(key):
        return f"loss/{m.group(1)}"
    if m := _VAL_SOURCE.match(key):
        return f"loss/val/{m.group(1)}"
    if key.startswith("val/"):
        return f"loss/{key}"
    if m := _MOE_LAYER.match(key):
        layer = int(m.group(2))
        if n_layers is not None and layer >= n_layers:
            return f"moe/mtp{layer - n_layers + 1}/{m.group(1)}"
        return key
    if key == "lr" or key.startswith("lr_"):
        return f"opt/{key}"
    if key.startswith("schedule/"):
        return f"opt/{key}"
    if key.startswith("downstream/"):
        return f"eval/{key}"
    if key.startswith("mem_") or key.endswith("_time_s"):
        return f"perf/{key}"
    if key.split("/", 1)[0] in SECTIONS and "/" in key:
        return key
    return f"other/{key}"


class TagMap:
    """tensorboard_tag with the model's trunk depth bound, memoised (called for every scalar of every record)."""

    def __init__(self, n_layers: int | None = None):
        self.n_layers = n_layers
        self._cache: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        tag = self._cache.get(key)
        if tag is None:
            tag = self._cache[key] = tensorboard_tag(key, self.n_layers)
        return tag
