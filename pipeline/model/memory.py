"""Analytic per-rank memory of parameters, gradients and optimizer state under a parallel layout.

Pure arithmetic on the config (the model itself stays free of parallelism). Assumptions, matching the
planned training system: dense weights replicated over DP and split over TP; expert weights split over
EP (EP ranks carved out of DP, so each expert is replicated over dp/ep ranks); OE tables row-sharded over
all DP ranks (paper §3.3), never replicated. Mixed precision keeps an fp32 master copy plus Adam's two
fp32 states; ZeRO-1 shards optimizer state over the replicas, ZeRO-2 also shards gradients. OE tables
keep params, grads and optimizer state only on their owner. Activations are not included.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig
from pipeline.model.flops import param_counts

DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass
class Layout:
    dp: int = 1
    tp: int = 1
    ep: int = 1

    @classmethod
    def parse(cls, specs: list[str]) -> "Layout":
        """'dp=32,tp=2' or ['dp=32', 'ep=8'] -> Layout; bad input raises a one-line ConfigError."""
        values: dict[str, int] = {}
        for spec in specs:
            for item in filter(None, spec.split(",")):
                key, _, raw = item.partition("=")
                key = key.strip()
                if key not in ("dp", "tp", "ep"):
                    raise ConfigError(f"layout: unknown axis {key!r} in {item!r} (allowed: dp, tp, ep)")
                if not raw.strip().isdigit() or int(raw) < 1:
                    raise ConfigError(f"layout.{key}: expected a positive integer, got {raw!r}")
                values[key] = int(raw)
        return cls(**values)

    def check(self, cfg: ModelConfig) -> None:
        if self.dp % self.ep:
            raise ConfigError(f"layout.ep: {self.ep} must divide dp={self.dp} (EP ranks come from DP)")
        if cfg.is_moe and cfg.n_experts % self.ep:
            raise ConfigError(f"layout.ep: {self.ep} must divide n_experts={cfg.n_experts}")
        if cfg.n_heads % self.tp:
            raise ConfigError(f"layout.tp: {self.tp} must divide n_heads={cfg.n_heads}")


def per_rank_bytes(cfg: ModelConfig, layout: Layout, param_dtype: str = "bf16", zero_stage: int = 1
                   ) -> dict[str, int]:
    if param_dtype not in DTYPE_BYTES:
        raise ConfigError(f"param_dtype: {param_dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    if zero_stage not in (0, 1, 2):
        raise ConfigError(f"zero_stage: {zero_stage} is not 0, 1 or 2")
    layout.check(cfg)
    c = param_counts(cfg)
    p = DTYPE_BYTES[param_dtype]
    opt = (0 if param_dtype == "fp32" else 4) + 8          # fp32 master (if needed) + Adam m and v
    experts = c["experts"]
    tables = c["oe_tables"]
    dense = c["total"] - experts - tables

    def replicated(n_local: float, replicas: int) -> tuple[float, float, float]:
        grads = n_local * p / (replicas if zero_stage >= 2 else 1)
        state = n_local * opt / (replicas if zero_stage >= 1 else 1)
        return n_local * p, grads, state

    d_p, d_g, d_o = replicated(dense / layout.tp, layout.dp)
    e_p, e_g, e_o = replicated(experts / layout.ep, layout.dp // layout.ep)
    t_local = tables / layout.dp
    out = {
        "params": d_p + e_p + t_local * p,
        "grads": d_g + e_g + t_local * p,
        "optimizer": d_o + e_o + t_local * opt,
        "oe_tables_params": t_local * p,
    }
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return {key: int(round(value)) for key, value in out.items()}
