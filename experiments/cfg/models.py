"""The CFG experiment's models: the project's OLMoE (dense MLP, like the paper's GPT-2) at two sizes, in three
variants that differ only in the input or output vocabulary.

- "1gram":     the plain character model (V = 4 in, V = 4 out).
- "3gram_in":  Over-Encoding with n = 3, k = 1 and m = 65 (tables of 65 and 67 rows). Since every 2-gram id
               is < V² = 16 and every 3-gram id < V³ = 64, no id is ever reduced: this is the EXACT hierarchical
               1+2+3-gram input vocabulary, with the sequence length unchanged. (m odd: never a multiple of V.)
- "3gram_out": one joint head over the V³ = 64 triples (x_{i+1}, x_{i+2}, x_{i+3}); at sampling the first
               token is drawn from the triple distribution's marginal, which is "sample jointly, keep the first".
               It reuses the model's output head with padded_vocab_size = 64 (embedding rows >= 4 stay unused).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from experiments.cfg.data import JOINT, VOCAB, joint_targets
from pipeline.config.model import ModelConfig, OverEncodingConfig
from pipeline.model import build_model

SIZES = {   # scaled down from the paper's GPT-2 12 layers at width 768 (85M) and 128 (2.4M) to fit 2 CPU cores
    # "tiny" tests the paper's explanation of its 3-gram-output result (a multi-token output head costs a model
    # that lacks capacity): below "small", capacity is short relative to this scaled-down grammar
    "tiny": dict(d_model=16, n_layers=4, n_heads=2, dense_hidden=64),
    "small": dict(d_model=32, n_layers=4, n_heads=2, dense_hidden=128),
    "large": dict(d_model=64, n_layers=4, n_heads=2, dense_hidden=256),
}
# The paper's small model (GPT-2, 12 layers, D = 128, 2.4M params): built only to time one training step, the
# measured reason a larger-than-it "large" model is out of reach here (experiments.cfg_experiment). Our dense
# MLP is SwiGLU (three matrices), so its hidden width is 2/3 of GPT-2's 4D (344 ~ 2/3 x 512) for equal params.
PAPER_SMALL = dict(d_model=128, n_layers=12, n_heads=2, dense_hidden=344)
VARIANTS = ["1gram", "3gram_in", "3gram_out"]


def model_config(size: str, variant: str, max_seq_len: int) -> ModelConfig:
    oe = OverEncodingConfig(enabled=variant == "3gram_in", n=3, k=1, m=65, reset_at_doc=False)
    shape = PAPER_SMALL if size == "paper_small" else SIZES[size]
    cfg = ModelConfig(name=f"cfg-{size}-{variant}", mlp="dense", vocab_size=VOCAB,
                      padded_vocab_size=VOCAB ** JOINT if variant == "3gram_out" else VOCAB,
                      max_seq_len=max_seq_len, doc_mask=False, over_encoding=oe, **shape)
    cfg.validate()
    return cfg


def build(size: str, variant: str, max_seq_len: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(size, variant, max_seq_len))


def first_token_logits(logits: torch.Tensor, variant: str) -> torch.Tensor:
    """[..., padded_V] head output -> [..., V] log-probabilities of the next token."""
    if variant == "3gram_out":
        return logits.log_softmax(-1).unflatten(-1, (VOCAB, VOCAB ** (JOINT - 1))).logsumexp(-1)
    return logits.log_softmax(-1)


def losses(model, window: torch.Tensor, seq_len: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, next-token CE). The training loss is the joint CE for 3gram_out, else the next-token
    CE; the next-token CE (marginal for 3gram_out) is comparable across variants."""
    x = window[:, :seq_len]
    logits = model.logits(x)
    nxt = window[:, 1:seq_len + 1]
    next_ce = F.nll_loss(first_token_logits(logits, variant).flatten(0, 1), nxt.flatten())
    if variant != "3gram_out":
        return next_ce, next_ce.detach()
    joint = F.cross_entropy(logits.flatten(0, 1), joint_targets(window, seq_len).flatten())
    return joint, next_ce.detach()
