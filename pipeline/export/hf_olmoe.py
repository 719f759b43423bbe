"""config.json of a HF export, in transformers' OLMoE terms: `OlmoeForCausalLM` for models it can hold (no
Over-Encoding, no Over-Decoding heads kept, QK-norm on), else the `over_tokenized_olmoe` configuration of
hf_remote/ (OlmoeConfig plus the Over-Encoding / Over-Decoding fields, loaded with trust_remote_code).

Conventions checked to be the same as transformers' OLMoE (tests/pipeline/export/test_hf_olmoe.py and
test_hf_export.py compare logits): RMSNorm eps in fp32; QK-norm over the full q and k (all heads) before RoPE;
RoPE rotate-half layout; router Linear -> softmax -> top-k WITHOUT renormalisation (norm_topk_prob = false);
SwiGLU experts down(silu(gate x) * up x); no biases; untied embeddings; vocab_size = our padded_vocab_size
(the remote code masks the logits of the padding ids, as our scoring and sampling leave them out;
generation_config.json suppresses them for the native class). Tensor names: pipeline/export/hf_layout.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.config.base import to_dict
from pipeline.config.model import ModelConfig
from pipeline.export.hf_layout import NATIVE, REMOTE, to_hf, without_od_heads

HF_WEIGHTS_FILE = "model.safetensors"
# config.json also carries our own model config, so eval / generate can rebuild the model from the folder
PIPELINE_CONFIG_KEY = "pipeline_model_config"
REMOTE_MODULES = ("configuration_over_tokenized_olmoe", "modeling_over_tokenized_olmoe")


class ExportError(ValueError):
    """The model cannot be expressed in the requested layout; one line naming the config key."""


def check_exportable(cfg: ModelConfig) -> None:
    """For transformers' own OlmoeForCausalLM (the native layout)."""
    if cfg.over_encoding.enabled:
        raise ExportError("over_encoding.enabled: true — OlmoeForCausalLM has no n-gram input tables; "
                          "launch/export.py --format hf writes it with the over_tokenized_olmoe remote code")
    if not cfg.qk_norm:
        raise ExportError("qk_norm: false — OlmoeForCausalLM always applies QK-norm")


def hf_config(cfg: ModelConfig, eos_id: int | None = None, pad_id: int | None = None,
              dtype: torch.dtype = torch.float32, bos_id: int | None = None) -> dict:
    moe = cfg.is_moe
    return {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.expert_hidden if moe else cfg.dense_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "use_cache": True,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        # transformers 4.x reads rope_theta, 5.x rope_parameters
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": None,
        "num_experts_per_tok": cfg.top_k if moe else 1,
        "num_experts": cfg.n_experts if moe else 1,
        "output_router_logits": False,
        "router_aux_loss_coef": cfg.lb_coef,
        "norm_topk_prob": False,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def remote_config(cfg: ModelConfig, eos_id: int | None = None, pad_id: int | None = None,
                  dtype: torch.dtype = torch.float32, bos_id: int | None = None) -> dict:
    """hf_config plus the fields of hf_remote/configuration_over_tokenized_olmoe.py and its auto_map."""
    config, model = hf_config(cfg, eos_id, pad_id, dtype, bos_id), REMOTE_MODULES[1]
    oe, od = cfg.over_encoding, cfg.over_decoding
    config.update({
        "architectures": ["OverTokenizedOlmoeForCausalLM"],
        "model_type": "over_tokenized_olmoe",
        "auto_map": {"AutoConfig": f"{REMOTE_MODULES[0]}.OverTokenizedOlmoeConfig",
                     "AutoModel": f"{model}.OverTokenizedOlmoeModel",
                     "AutoModelForCausalLM": f"{model}.OverTokenizedOlmoeForCausalLM"},
        "token_vocab_size": cfg.vocab_size, "oe_enabled": oe.enabled, "oe_n": oe.n, "oe_k": oe.k,
        "oe_m": oe.m if oe.enabled else 0, "oe_orders": list(oe.orders) if oe.orders is not None else None,
        "oe_unigram": oe.unigram, "oe_output_scale": oe.output_scale, "oe_output_norm": oe.output_norm,
        "qk_norm": cfg.qk_norm,
        "mtp_depth": od.depth if od.mode == "mtp" else 0,
        "mtp_output_norm": od.mode == "mtp" and od.output_norm == "per_module",
        "product_n": od.n if od.mode == "product" else 0,
        "product_head_dim": od.head_dim if od.mode == "product" else 0,
    })
    return config


def export_config(cfg: ModelConfig, layout: str, special_ids: dict, dtype: torch.dtype) -> dict:
    """config.json for `layout` (hf_layout.NATIVE / REMOTE) with our model config under PIPELINE_CONFIG_KEY."""
    build = remote_config if layout == REMOTE else hf_config
    config = build(cfg, special_ids.get("eos_token_id"), special_ids.get("pad_token_id"), dtype,
                   special_ids.get("bos_token_id"))
    # the JSON round trip turns tuples into lists
    config[PIPELINE_CONFIG_KEY] = json.loads(json.dumps(to_dict(cfg)))
    return config


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> OlmoeForCausalLM hub names (MTP / product heads dropped)."""
    check_exportable(cfg)
    return to_hf(state, without_od_heads(cfg), NATIVE)


def save_hf_olmoe(out_dir: str | Path, state: dict[str, torch.Tensor], cfg: ModelConfig, meta: dict,
                  eos_id: int | None = None, pad_id: int | None = None, dtype: torch.dtype = torch.float32,
                  overwrite: bool = False) -> Path:
    """The native OlmoeForCausalLM folder of a model without Over-Encoding (heads dropped, no tokenizer)."""
    check_exportable(cfg)
    from pipeline.export.hf_export import save_hf

    return save_hf(out_dir, state, cfg, meta, drop_od_heads=True, dtype=dtype, overwrite=overwrite,
                   special_ids={"eos_token_id": eos_id, "pad_token_id": pad_id})
