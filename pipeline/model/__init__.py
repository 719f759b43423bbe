"""OLMoE + Over-Encoding + Over-Decoding. `build_model(cfg)` is the entry point used by the trainer."""
from __future__ import annotations

import torch

from pipeline.config.model import ModelConfig
from pipeline.model.olmoe import OLMoE, ModelOutput, labels_from_inputs


def build_model(model_cfg: ModelConfig, device: str | torch.device | None = None, seed: int | None = None
                ) -> OLMoE:
    """Build (and initialise) the model; device="meta" builds it without allocating memory (materialise with
    pipeline.model.init.materialize + init_weights, or per rank with pipeline.parallel.parallelize). `seed`
    fixes the initial values (pipeline/model/init.py); by default it is drawn from torch's global generator."""
    if device is None:
        return OLMoE(model_cfg, seed)
    with torch.device(device):
        return OLMoE(model_cfg, seed)


__all__ = ["ModelConfig", "ModelOutput", "OLMoE", "build_model", "labels_from_inputs"]
