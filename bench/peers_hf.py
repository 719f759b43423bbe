"""Our OLMoE (no Over-Encoding) and transformers' OlmoeForCausalLM with the same shape and weights, for the
peer benchmarks (bench/peers_train.py, bench/peers_generate.py).

The HF model is loaded from a folder written by our exporter (pipeline/export/hf_olmoe.py), as a user would
load our checkpoint, with transformers' defaults for CPU (sdpa attention, grouped_mm experts); its logits
are checked against ours before anything is timed.
"""
from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BASE_MODEL = REPO / "configs/model/olmoe-1.3b.yaml"      # OLMoE conventions, V = 50280 padded to 50304
# CPU-sized OLMoE shapes; d512 has OLMoE's 64-expert top-8 routing at a quarter of its width.
SIZES = {
    "d128": ["d_model=128", "n_layers=4", "n_heads=4", "n_experts=16", "top_k=4", "expert_hidden=64"],
    "d512": ["d_model=512", "n_layers=4", "n_heads=8", "n_experts=64", "top_k=8", "expert_hidden=256"],
}


def model_config(size: str, *overrides: str):
    from pipeline.config.model import load_model_config
    return load_model_config(BASE_MODEL, [*SIZES[size], *overrides])


def build_ours(cfg, seed: int = 0):
    from pipeline.model import build_model
    return build_model(cfg, seed=seed)


def load_hf(ours, folder: Path):
    """transformers' OlmoeForCausalLM holding `ours`'s weights, through our exporter."""
    import transformers

    from pipeline.export.hf_olmoe import save_hf_olmoe
    save_hf_olmoe(folder, ours.state_dict(), ours.cfg, {"step": 0})
    return transformers.OlmoeForCausalLM.from_pretrained(folder, dtype=torch.float32)


@torch.no_grad()
def check_same_logits(ours, hf, ids: torch.Tensor) -> float:
    """Max |ours - HF| / max |logit| over a batch; raises when above 1e-4 (test_hf_olmoe.py's tolerance)."""
    ours.eval(), hf.eval()
    mine, theirs = ours.logits(ids), hf(input_ids=ids).logits
    ours.train(), hf.train()
    rel = float((mine - theirs).abs().max() / mine.abs().max())
    if not rel <= 1e-4:
        raise AssertionError(f"our logits differ from OlmoeForCausalLM's by {rel:.2e} (relative): not the same model")
    return rel


def random_batch(cfg, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
