"""The custom-scalars layout (TensorBoard's CUSTOM SCALARS page, http://HOST:6006/#custom_scalars) written at
the start of every run, so the first page answers "is it learning, is it fast, is it balanced, are the OE
tables used": loss with validation, the over-decoding losses, lr and gradient norm, throughput and MFU,
MoE balance, Over-Encoding health, data position.

Every chart names its series by regular expressions over the TensorBoard tags of tensorboard_tags.py
(TensorBoard matches them from the start of the tag), so per-layer, per-table and per-source series that a
model or a data mixture adds join their chart without a change here. Categories that the model does not
have (MoE without experts, OE without tables, MTP without depth, zero-shot evaluation or checkpoints that are
off) are left out rather than shown empty; the last chart ("Other") draws every tag no chart above draws, so
a new metric is on this page from its first record.
"""
from __future__ import annotations

from pipeline.config.run import RunConfig

Chart = tuple[str, list[str]]       # (title, tag regexes)


def _loss(cfg: RunConfig) -> list[Chart]:
    # Per-source validation losses (loss/val/<source>) share the chart of the overall one: one look compares them.
    charts = [("total, LM and validation loss (overall and per source)", [r"loss/(total|lm|val)$", r"loss/val/[^/]+$"])]
    mode = cfg.model.over_decoding.mode
    if mode != "none":
        title = "MTP losses (mtp_d: depth d) vs LM" if mode == "mtp" else "over-decoding head losses (od_j) vs LM"
        charts.append((title, [r"loss/lm$", r"loss/(mtp|od)_\d+$"]))
    charts.append(("validation perplexity (and other per-source validation metrics)",
                   [r"loss/val_ppl$", r"loss/val/[^/]+/.+"]))
    return charts


def _moe(cfg: RunConfig) -> list[Chart]:
    charts = [("load-balancing loss (mean over router layers)", [r"moe/lb_loss$"]),
              ("router z-loss (mean over router layers)", [r"moe/z_loss$"]),
              ("expert load max/mean, trunk layers (1 = balanced)", [r"moe/imbalance_max$",
                                                                     r"moe/imbalance/layer_\d+$"])]
    if cfg.model.over_decoding.mode == "mtp":
        charts.append(("expert load max/mean, MTP modules", [r"moe/mtp\d+/imbalance$"]))
    return charts


OE_CHARTS: list[Chart] = [
    ("fraction of table rows ever looked up (per table)", [r"oe/rows_touched$", r"oe/rows_touched/table_\d+$"]),
    ("n-gram part RMS / token embedding RMS", [r"oe/ngram_rms_ratio$", r"oe/ngram_rms_ratio/table_\d+$"]),
    ("table gradient norm (before clipping)", [r"oe/grad_norm$", r"oe/grad_norm/table_\d+$"]),
    ("distinct rows looked up per step (rank 0)", [r"oe/distinct_rows(_mean|/table_\d+)$"]),
]
OPT_CHARTS: list[Chart] = [
    ("learning rate", [r"opt/lr(_[^/]+)?$", r"opt/schedule/.+"]),
    ("gradient norm (before clipping)", [r"opt/grad_norm$"]),
    ("skipped (non-finite) steps", [r"opt/skipped_steps$"]),
]
PERF_CHARTS: list[Chart] = [
    ("tokens / s", [r"perf/tokens_per_s$"]),
    ("model FLOPs utilisation", [r"perf/mfu$"]),
    ("seconds per step", [r"perf/step_time_s$"]),
    ("memory (GiB)", [r"perf/mem_.+"]),
    ("validation / eval time (s)", [r"perf/(?!step_).+_time_s$"]),
    ("time to the end of the run (s)", [r"perf/eta_s$"]),
]
DATA_CHARTS: list[Chart] = [
    ("tokens seen (total and per source)", [r"data/tokens_seen$", r"data/[^/]+/tokens$"]),
    ("epochs (total and per source)", [r"data/epoch$", r"data/[^/]+/epoch$"]),
]
EVAL_CHARTS: list[Chart] = [("zero-shot accuracy (per task and the five-task mean)", [r"eval/.+"])]
CHECKPOINT_CHARTS: list[Chart] = [("checkpoint save seconds", [r"checkpoint/save_s$"]),
                                  ("checkpoint bytes (all, of which layout-free)", [r"checkpoint/.*bytes$"])]


def _undrawn(sections: list[tuple[str, str, list[Chart]]]) -> Chart:
    """One chart of every tag no chart above draws: other/ (keys without a section rule) and, per section,
    the tags none of its charts match, so a metric added later is on the page from its first record."""
    patterns = [r"other/.+"]
    for _, section, charts in sections:
        drawn = "|".join(f"(?:{p})" for _, chart_patterns in charts for p in chart_patterns)
        patterns.append(rf"(?!{drawn}){section}/.+")
    return "metrics no chart above draws (empty unless a new metric has no chart yet)", patterns


def layout_categories(cfg: RunConfig) -> list[tuple[str, list[Chart]]]:
    """[(category title, [(chart title, [tag regex, ...])])], in page order."""
    m = cfg.model
    sections = [("Loss", "loss", _loss(cfg)), ("Optimizer", "opt", OPT_CHARTS), ("Throughput", "perf", PERF_CHARTS)]
    if m.is_moe:
        sections.append(("MoE balance", "moe", _moe(cfg)))
    if m.over_encoding.enabled:
        sections.append(("Over-Encoding health", "oe", OE_CHARTS))
    sections.append(("Data", "data", DATA_CHARTS))
    if cfg.eval.downstream_every:
        sections.append(("Zero-shot evaluation", "eval", EVAL_CHARTS))
    if cfg.checkpoint.every or cfg.checkpoint.save_at_end:
        sections.append(("Checkpoints", "checkpoint", CHECKPOINT_CHARTS))
    return [(title, charts) for title, _, charts in sections] + [("Other", [_undrawn(sections)])]


def custom_scalars_layout(cfg: RunConfig) -> dict:
    """The layout in the form SummaryWriter.add_custom_scalars takes: {category: {chart: ["Multiline", tags]}}."""
    return {category: {title: ["Multiline", tags] for title, tags in charts}
            for category, charts in layout_categories(cfg)}
