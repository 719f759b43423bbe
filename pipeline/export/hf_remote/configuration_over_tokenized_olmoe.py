"""Configuration of an Over-Tokenized OLMoE (arXiv 2501.16975): the OLMoE backbone of transformers plus
Over-Encoding (hashed n-gram input embeddings) and optional Over-Decoding heads (MTP-DS modules or
product-form heads), as exported by the training repository's `launch/export.py --format hf`.

Self-contained (torch + transformers >= 5 only): this file travels inside the exported model folder.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import OlmoeConfig


@strict
class OverTokenizedOlmoeConfig(OlmoeConfig):
    r"""OlmoeConfig plus:

    token_vocab_size: the tokenizer's vocabulary V; `vocab_size` is the embedding / head rows (padded), and
        the logits of ids >= V are masked (0 = no padding).
    oe_enabled: Over-Encoding on. Then k(n-1) tables (or k per order in `oe_orders`): table t serves n-gram
        order `orders[t // k]`, has `oe_m + 2t` rows and width hidden_size / #tables; its row at position i is
        g(i) mod (oe_m + 2t) with g(i) = sum_j x_{i-j} V^j and x = 0 before the start of the sequence.
    oe_unigram / oe_output_scale / oe_output_norm: the input embedding is
        (E[x_i] + scale * norm?(proj(concat_t rows))) / (1 + #tables), or without E[x_i] / #tables.
    qk_norm: False replaces OLMoE's q/k RMSNorm by the identity.
    mtp_depth: number of sequential MTP-DS modules (module d predicts token i+d+1); not used by forward().
    mtp_output_norm: each MTP module has its own RMSNorm (`mtp.{d}.output_norm`) before the shared head
        (DeepSeek-V3); False: every depth reuses the trunk's final norm.
    product_n / product_head_dim: product-form heads j = 2..product_n predicting token i+j; not used by forward().
    """

    model_type = "over_tokenized_olmoe"

    token_vocab_size: int = 0
    oe_enabled: bool = False
    oe_n: int = 3
    oe_k: int = 2
    oe_m: int = 0
    oe_orders: list[int] | None = None
    oe_unigram: bool = True
    oe_output_scale: float = 1.0
    oe_output_norm: bool = False
    qk_norm: bool = True
    mtp_depth: int = 0
    mtp_output_norm: bool = False
    product_n: int = 0
    product_head_dim: int = 0

    def table_orders(self) -> list[int]:
        """n-gram order of each group of k tables."""
        return list(self.oe_orders) if self.oe_orders is not None else list(range(2, self.oe_n + 1))

    def table_moduli(self) -> list[int]:
        """Rows of each table (its hash modulus): oe_m + 2t, a different modulus per table."""
        return [self.oe_m + 2 * t for t in range(self.oe_k * len(self.table_orders()))]


__all__ = ["OverTokenizedOlmoeConfig"]
