"""Model configuration: OLMoE backbone + Over-Encoding (OE) + Over-Decoding (OD).

Defaults follow OLMoE-1B-7B and the Over-Tokenized Transformer paper (arXiv 2501.16975). A YAML file in
configs/model/ holds the ModelConfig fields at its top level; run configs embed the same mapping under `model:`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.base import ConfigError, check, load_config, read_yaml

# ids are computed as (x mod M) * (V^j mod M) in int64, so M^2 must stay below 2^63.
MAX_OE_MODULUS = math.isqrt(2**63 - 1)


@dataclass
class OverEncodingConfig:
    """Alg. 1: k(n-1) hashed n-gram tables; table t serves order 2 + t//k with m + 2t rows."""

    enabled: bool = False
    n: int = 3                      # max n-gram order (1-gram is the ordinary token embedding)
    k: int = 2                      # tables (slices) per order
    m: int = 12_800_000             # base table size; total table params ~= m * d_model
    reset_at_doc: bool = True       # n-gram context restarts at document starts (False = pseudocode literal)
    output_scale: float = 1.0       # multiply the summed n-gram projections (LongCat: ~sqrt(D)); 1 = paper
    output_norm: bool = False       # RMSNorm the summed n-gram projections before the mean; False = paper
    init_std: float = 0.02          # tables use the token-embedding init (paper silent; ports do this)
    # Ablations (paper Tables 3-4); the defaults are the paper's method.
    orders: list[int] | None = None  # n-gram orders that get tables, e.g. [3] for "1+3"; None = 2..n
    unigram: bool = True            # False drops E_tok[x_i] from the mean ("2-gram without 1-gram")
    allow_vocab_multiple: bool = False  # True turns the m-multiple-of-V error into a warning (collision ablation)

    def table_orders(self) -> list[int]:
        """Order served by each group of k tables: table t serves table_orders()[t // k]."""
        return list(self.orders) if self.orders is not None else list(range(2, self.n + 1))

    @property
    def num_tables(self) -> int:
        return self.k * len(self.table_orders())

    def moduli(self) -> list[int]:
        return [self.m + 2 * t for t in range(self.num_tables)]

    def validate(self) -> None:
        if not self.enabled:
            return
        check(self.n >= 2, "n", f"must be >= 2 (got {self.n})")
        check(self.k >= 1, "k", f"must be >= 1 (got {self.k})")
        check(self.m >= 2, "m", f"must be >= 2 (got {self.m})")
        check(self.m + 2 * (self.num_tables - 1) <= MAX_OE_MODULUS, "m",
              f"{self.m} too large: moduli must stay below {MAX_OE_MODULUS} for exact int64 hashing")
        check(self.init_std > 0, "init_std", f"must be > 0 (got {self.init_std})")
        check(self.output_scale > 0, "output_scale", f"must be > 0 (got {self.output_scale})")
        if self.orders is not None:
            check(len(self.orders) >= 1 and all(2 <= o <= self.n for o in self.orders)
                  and len(set(self.orders)) == len(self.orders), "orders",
                  f"must be distinct orders in [2, n={self.n}] (got {self.orders})")

    def check_against_vocab(self, vocab_size: int) -> None:
        """Paper §4 ablation: m = 64·V makes the 2-gram id depend on x_{i-1} mod 64 only."""
        if not self.enabled:
            return
        for t, mod in enumerate(self.moduli()):
            if mod % vocab_size == 0 and not self.allow_vocab_multiple:
                # named relative to the model, whose validate() calls this
                raise ConfigError.at("over_encoding.m", f"table {t} modulus m+2t={mod} is a multiple of "
                                     f"vocab_size={vocab_size}; n-gram ids would collapse (choose another m)")
            g = math.gcd(mod, vocab_size)
            if mod // g < vocab_size:
                warnings.warn(f"over_encoding.m: table {t} modulus {mod} shares factor {g} with vocab_size "
                              f"{vocab_size}; only {mod // g} distinct previous-token contributions", stacklevel=2)


@dataclass
class OverDecodingConfig:
    """mode mtp: DeepSeek-V3 sequential MTP of `depth`; mode product: Appendix C heads j = 2..n."""

    mode: Literal["none", "mtp", "product"] = "none"
    depth: int = 1                  # mtp: number of sequential modules (module d predicts x_{i+1+d})
    n: int = 2                      # product: heads predict x_{i+j} for j = 2..n
    head_dim: int = 0               # product: optional Linear(D -> head_dim) before Linear(. -> V); 0 = none
    weight: float = 0.1             # lambda: loss = main + lambda * mean over extra terms
    weights: list[float] | None = None  # per-term lambda_j instead: loss = main + sum_j lambda_j L_j
    # mtp: the norm before the shared head. "shared" (default, what checkpoints so far hold): every depth
    # reuses the trunk's final norm. "per_module": DeepSeek-V3 (arXiv 2412.19437 §2.2) gives each MTP module
    # its own output RMSNorm (parameter mtp.{d}.output_norm.weight) before the shared head.
    output_norm: Literal["shared", "per_module"] = "shared"

    @property
    def num_terms(self) -> int:
        if self.mode == "mtp":
            return self.depth
        if self.mode == "product":
            return self.n - 1
        return 0

    def validate(self) -> None:
        if self.mode == "none":
            # A depth / n / weights set without a mode would silently train no extra heads.
            check(self.depth == 1 and self.n == 2 and self.weights is None and self.output_norm == "shared",
                  "mode", f"is none but over_decoding.depth={self.depth} / n={self.n} / weights={self.weights} / "
                  f"output_norm={self.output_norm} are set (allowed: mode mtp or product with those keys, or "
                  "leave them unset)")
            return
        check(self.mode == "mtp" or self.output_norm == "shared", "output_norm",
              f"{self.output_norm} needs mode mtp (product heads read the trunk's normed state), got mode {self.mode}")
        check(self.depth >= 1, "depth", f"must be >= 1 (got {self.depth})")
        check(self.n >= 2, "n", f"must be >= 2 (got {self.n})")
        check(self.head_dim >= 0, "head_dim", f"must be >= 0 (got {self.head_dim})")
        check(self.weight >= 0, "weight", f"must be >= 0 (got {self.weight})")
        if self.weights is not None:
            check(len(self.weights) == self.num_terms, "weights",
                  f"needs {self.num_terms} values for mode {self.mode}, got {len(self.weights)}")
            check(all(w >= 0 for w in self.weights), "weights", f"must be >= 0 (got {self.weights})")

    def term_weights(self) -> list[float]:
        if self.weights is not None:
            return list(self.weights)
        return [self.weight / max(self.num_terms, 1)] * self.num_terms


@dataclass
class ModelConfig:
    name: str = "olmoe"
    note: str = ""                  # provenance, e.g. "inferred stand-in: the paper does not publish the shape"
    d_model: int = 1024
    n_layers: int = 12
    n_heads: int = 16
    vocab_size: int = 50280         # tokenizer vocabulary (ids must be < vocab_size)
    padded_vocab_size: int = 50304  # rows of the embedding / output head (multiple of 128 for speed)
    mlp: Literal["moe", "dense"] = "moe"
    n_experts: int = 64
    top_k: int = 8
    expert_hidden: int = 512        # SwiGLU hidden per expert
    dense_hidden: int = 0           # SwiGLU hidden of the dense MLP (mlp: dense)
    lb_coef: float = 0.01           # Switch load-balancing loss coefficient
    z_coef: float = 0.001           # router z-loss coefficient
    # Which routers the lb / z means cover when MTP modules (each one MoE block) are present. "pooled"
    # (default, the behaviour so far): one mean over the n_layers trunk routers and the D MTP routers, so the
    # trunk's effective coefficient is lb_coef * L/(L+D). "trunk_only": the mean over the trunk routers only
    # (exactly OLMoE's per-layer mean; the MTP routers get no balancing term). "separate": trunk mean plus a
    # second mean over the MTP routers (losses lb_mtp / z_mtp), each with the full coefficient. DeepSeek-V3
    # does not say (it balances by bias, not by loss). Needs over_decoding.mode mtp and mlp moe.
    mtp_aux_loss: Literal["pooled", "trunk_only", "separate"] = "pooled"
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    qk_norm: bool = True            # RMSNorm over the full q and k before RoPE (OLMoE)
    init_std: float = 0.02          # N(0, std) truncated at 3 std
    max_seq_len: int = 4096
    doc_mask: bool = True           # attention stays inside documents when doc_starts is given
    # Recompute each trunk block in the backward instead of keeping its activations (training only):
    # saves activation memory for ~1/3 more block compute; see docs/performance.md.
    activation_checkpointing: bool = False
    # torch.compile every transformer block in the prepare step (pipeline/parallel/compile.py): same
    # numerics to rounding, faster steps after a one-off compile; see docs/performance.md.
    compile: bool = False
    over_encoding: OverEncodingConfig = field(default_factory=OverEncodingConfig)
    over_decoding: OverDecodingConfig = field(default_factory=OverDecodingConfig)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.mlp == "moe"

    def validate(self) -> None:
        for key in ("d_model", "n_layers", "n_heads", "vocab_size", "max_seq_len"):
            check(getattr(self, key) >= 1, key, f"must be >= 1 (got {getattr(self, key)})")
        check(self.d_model % self.n_heads == 0, "n_heads",
              f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        check(self.head_dim % 2 == 0, "n_heads", f"head_dim {self.head_dim} must be even for RoPE")
        check(self.padded_vocab_size >= self.vocab_size, "padded_vocab_size",
              f"{self.padded_vocab_size} is smaller than vocab_size {self.vocab_size}")
        if self.is_moe:
            check(self.n_experts >= 1, "n_experts", f"must be >= 1 (got {self.n_experts})")
            check(1 <= self.top_k <= self.n_experts, "top_k",
                  f"must be in [1, n_experts={self.n_experts}] (got {self.top_k})")
            check(self.expert_hidden >= 1, "expert_hidden", f"must be >= 1 (got {self.expert_hidden})")
        else:
            check(self.dense_hidden >= 1, "dense_hidden", f"must be >= 1 for mlp: dense (got {self.dense_hidden})")
        check(self.lb_coef >= 0, "lb_coef", f"must be >= 0 (got {self.lb_coef})")
        check(self.z_coef >= 0, "z_coef", f"must be >= 0 (got {self.z_coef})")
        check(self.mtp_aux_loss == "pooled" or (self.is_moe and self.over_decoding.mode == "mtp"), "mtp_aux_loss",
              f"{self.mtp_aux_loss} needs mlp moe and over_decoding.mode mtp (without MTP routers every choice is "
              f"the trunk mean); got mlp {self.mlp}, over_decoding.mode {self.over_decoding.mode}")
        check(self.norm_eps > 0, "norm_eps", f"must be > 0 (got {self.norm_eps})")
        check(self.rope_theta > 0, "rope_theta", f"must be > 0 (got {self.rope_theta})")
        check(self.init_std > 0, "init_std", f"must be > 0 (got {self.init_std})")
        oe = self.over_encoding
        if oe.enabled:
            check(self.d_model % oe.num_tables == 0, "over_encoding.k",
                  f"d_model {self.d_model} is not divisible by k(n-1) = {oe.num_tables} tables")
            oe.check_against_vocab(self.vocab_size)


def load_model_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      data: dict | None = None) -> ModelConfig:
    """Load a model YAML (configs/model/*.yaml), or the `model:` section of a run YAML, plus overrides."""
    if path is not None:
        raw = read_yaml(path)
        if isinstance(raw.get("model"), dict):
            raw = raw["model"]
        elif isinstance(raw.get("model"), str):
            raw = read_yaml(Path(path).parent / raw["model"])
        return load_config(ModelConfig, data=raw, overrides=overrides)
    return load_config(ModelConfig, data=data, overrides=overrides)
