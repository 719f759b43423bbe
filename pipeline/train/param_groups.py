"""Optimizer parameter groups.

- `decay`: weight matrices, weight decay `optim.weight_decay`.
- `no_decay`: norms, biases and any other 1-D parameter, unless `optim.decay_norm_and_bias` (OLMo's
  option of that name; OLMoE-1B-7B sets it) puts them in `decay`.
- `embedding`: the input token embedding, decayed with `optim.weight_decay` only with
  `optim.embedding_weight_decay` (OLMo's `decay_embeddings`; OLMoE-1B-7B sets it).
- `oe_tables`: Over-Encoding tables (`param._oe_table = True`): lr x `optim.oe_lr_multiplier`, weight decay
  `optim.oe_weight_decay`. The paper is silent; defaults (1x, 0.0) follow the public ports, see
  docs/training.md.
Every group carries its `name` so logs and tests can find it; empty groups are dropped.
"""
from __future__ import annotations

from torch import nn

from pipeline.config.run import OptimConfig


def classify_param(name: str, param, decay_norm_and_bias: bool = False) -> str:
    # The OE tables are not "embeddings" for embedding_weight_decay: they are sparse (a row is touched only
    # when its n-gram occurs), have their own optimizer (pipeline/parallel/table_optimizers.py) and their own
    # decay, optim.oe_weight_decay; OLMo's decay_embeddings has no such tables to speak for.
    if getattr(param, "_oe_table", False):
        return "oe_tables"
    lowered = name.lower()
    if param.ndim < 2 or "norm" in lowered or lowered.endswith(".bias"):
        return "decay" if decay_norm_and_bias else "no_decay"
    leaf = lowered.split(".")
    # The input token embedding (the model names it `embed`); the output head counts as a matrix.
    if any(part in ("embed", "embedding", "embeddings", "tok_embeddings", "wte") for part in leaf[:-1]):
        return "embedding"
    return "decay"


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    buckets: dict[str, list] = {"decay": [], "no_decay": [], "embedding": [], "oe_tables": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets[classify_param(name, p, cfg.decay_norm_and_bias)].append(p)
    emb_wd = cfg.weight_decay if cfg.embedding_weight_decay else 0.0
    groups = [
        {"name": "decay", "params": buckets["decay"], "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"name": "no_decay", "params": buckets["no_decay"], "weight_decay": 0.0, "lr": cfg.lr},
        {"name": "embedding", "params": buckets["embedding"], "weight_decay": emb_wd, "lr": cfg.lr},
        {"name": "oe_tables", "params": buckets["oe_tables"], "weight_decay": cfg.oe_weight_decay,
         "lr": cfg.lr * cfg.oe_lr_multiplier},
    ]
    return [g for g in groups if g["params"]]


# The metric each group's learning rate is logged as; other groups share the "decay" group's schedule.
LR_METRIC_OF_GROUP = {"decay": "lr", "oe_tables": "lr_oe"}


def learning_rate_metrics(param_groups: list[dict]) -> dict[str, float]:
    """{"lr": the decay group's lr (or the first group's), "lr_oe": the OE table group's, if present}."""
    out = {}
    for group in param_groups:
        metric = LR_METRIC_OF_GROUP.get(group.get("name", "decay"))
        if metric is not None:
            out[metric] = float(group["lr"])
    if "lr" not in out and param_groups:
        out["lr"] = float(param_groups[0]["lr"])
    return out
