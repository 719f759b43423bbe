"""The start-of-run summary rank 0 prints and saves as run_dir/summary.txt: which config, how big the model
is (total / active per token / OE tables), the per-rank memory estimate, what data the run will see, and
the parallel layout, so a misconfigured run is caught from its first lines instead of from its loss curve.

Numbers come from the same code as `python launch/inspect_model.py --run-config F --world N`
(inspect_run below, built on pipeline/model/inspect_report.py and memory.py): the summary and the inspector
cannot disagree. The data part is a list of DataSource rows (name, tokens, documents, weight, epochs in
train.max_steps): one per source of a weighted mixture (data.sources), or the one data.path folder;
`folder_source` makes the row of one data_prep folder from its manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.run import RunConfig
from pipeline.data.atomic_io import atomic_write_bytes
from pipeline.data.manifest import read_manifest
from pipeline.model.inspect_report import inspect_config
from pipeline.model.memory import Layout
from pipeline.train.callbacks.metrics import format_count
from pipeline.train.metrics_writer import TB_DIR

SUMMARY_FILE = "summary.txt"


def inspect_run(cfg: RunConfig, world: int, config_path: str | None = None, param_dtype: str | None = None,
                zero_stage: int | None = None) -> dict:
    """The inspector's report for a loaded run config on `world` ranks: the layout (tp, ep from `parallel:`,
    dp = world / tp), precision, ZeRO stage and batch, checked with the trainer's own layout checks."""
    from pipeline.train.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps
    from pipeline.train.parallel_run import check_run_layout

    par = cfg.parallel
    check_run_layout(cfg, world)                       # the trainer's own layout checks, one line each
    dp = world // par.tp
    accum = gradient_accumulation_steps(cfg, dp)       # global batch must tile micro batch x dp
    zero_config = build_deepspeed_config(cfg, dp)["zero_optimization"]   # the user JSON merged, as in training
    precision = param_dtype or cfg.deepspeed.precision
    zero = cfg.deepspeed.zero_stage if zero_stage is None else zero_stage
    tokens = cfg.train.global_batch_size * cfg.data.seq_len // dp
    report = inspect_config(cfg.model, Layout(dp=dp, tp=par.tp, ep=par.ep), precision, zero, cfg.data.seq_len,
                            par.table_optimizer, par.oe_shard_group, tokens, zero_config)
    report["run"] = {"config": str(config_path), "world": world, "micro_batch_size": cfg.train.micro_batch_size,
                     "global_batch_size": cfg.train.global_batch_size, "gradient_accumulation_steps": accum,
                     "seq_len": cfg.data.seq_len}
    return report


@dataclass
class DataSource:
    name: str
    tokens: int          # tokens of the training split
    docs: int            # documents of the training split
    weight: float        # normalised share of the training sequences
    epochs: float        # passes over this source in train.max_steps


def folder_source(name: str, path: str | Path, split: str, weight: float, cfg: RunConfig) -> DataSource:
    """The row of one data_prep folder (its manifest's totals); `weight` normalised over the mixture."""
    shards = read_manifest(path).split_shards(split)
    tokens, docs = sum(s.tokens for s in shards), sum(s.documents for s in shards)
    samples_per_epoch = max((tokens - 1) // cfg.data.seq_len, 1)   # pipeline/data/packing.py's windows
    samples = cfg.train.max_steps * cfg.train.global_batch_size * weight
    return DataSource(name, tokens, docs, weight, samples / samples_per_epoch)


def data_sources(cfg: RunConfig) -> list[DataSource]:
    """One row per source of data.sources (data.path alone: one source "train" of weight 1); the mixture
    gives source s the share weight_s / sum of weights of the sequences (pipeline/data/mixture.py)."""
    sources = cfg.data.source_list()
    total = sum(s.weight for s in sources)
    return [folder_source(s.name, s.path, cfg.data.train_split, s.weight / total, cfg) for s in sources]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def summary_text(cfg: RunConfig, report: dict, sources: list[DataSource], start: str,
                 oe_rows_per_rank: int | None = None) -> str:
    """The summary's lines. `report`: inspect_run's; `start`: "fresh" or "resumed from ..."."""
    run, lay, b = report["run"], report["layout"], report["per_rank_bytes"]
    t = cfg.train
    tokens_per_step = t.global_batch_size * cfg.data.seq_len
    lines = [f"run summary: {Path(cfg.run_dir).resolve()} ({start})",
             f"  config          {run['config']}",
             f"  model           {report['name']}" + (f"  ({report['note']})" if report["note"] else ""),
             f"  parameters      total {format_count(report['params_total'])} ({report['params_total']:,}), "
             f"active per token {format_count(report['params_active'])}, "
             f"OE tables {format_count(report['params_oe_tables'])}, experts {format_count(report['params_experts'])}",
             f"  memory / rank   held {_gib(b['held'])}, peak {_gib(b['total'])}, start-up {_gib(b['startup_peak'])} "
             f"(parameters, gradients, optimizer state; activations excluded; {lay['param_dtype']} "
             f"ZeRO-{lay['zero_stage']})",
             f"  training        {t.max_steps:,} steps x {t.global_batch_size} sequences x {cfg.data.seq_len} tokens "
             f"= {format_count(t.max_steps * tokens_per_step)} tokens (micro batch {t.micro_batch_size}, "
             f"gradient accumulation {run['gradient_accumulation_steps']})",
             f"  data            {'source':<16}{'tokens':>14}{'docs':>12}{'weight':>8}{'epochs':>9}"]
    for s in sources:
        lines.append(f"                  {s.name:<16}{s.tokens:>14,}{s.docs:>12,}{s.weight:>8.3f}{s.epochs:>9.2f}")
    oe = ""
    if cfg.model.over_encoding.enabled:
        group = lay["dp"] if cfg.parallel.oe_shard_group == "dp" else run["world"]
        rows = f" ({oe_rows_per_rank:,} rows on this rank)" if oe_rows_per_rank is not None else ""
        where = (f"row-sharded over the {group} {cfg.parallel.oe_shard_group} ranks" if group > 1
                 else "whole on each rank")
        oe = f"; OE tables {where}{rows}, table optimizer {cfg.parallel.table_optimizer}"
    lines.append(f"  layout          world {run['world']} = dp {lay['dp']} x tp {lay['tp']}, ep {lay['ep']}, "
                 f"ZeRO-{lay['zero_stage']}, precision {lay['param_dtype']}{oe}")
    if cfg.log.tensorboard:
        lines.append(f"  tensorboard     tensorboard --logdir {Path(cfg.run_dir) / TB_DIR}  "
                     f"then http://localhost:6006/#custom_scalars")
    return "\n".join(lines) + "\n"


def write_run_summary(cfg: RunConfig, world: int, config_path: str | None, start: str,
                      oe_rows_per_rank: int | None = None, out=None) -> str:
    """Rank 0: print the summary and save it as run_dir/summary.txt (replaced by every start)."""
    path = str(Path(config_path).resolve()) if config_path else "(built in code, no config file)"
    text = summary_text(cfg, inspect_run(cfg, world, path), data_sources(cfg), start, oe_rows_per_rank)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / SUMMARY_FILE, text.encode())
    print(text, end="", file=out, flush=True)
    return text
