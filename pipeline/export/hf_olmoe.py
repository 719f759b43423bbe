"""Export a model WITHOUT Over-Encoding to the Hugging Face transformers `OlmoeForCausalLM` layout:
config.json + model.safetensors with the hub checkpoint names (per-expert gate/up/down projections, as in
allenai/OLMoE-1B-7B; transformers >= 5 fuses them into gate_up_proj while loading, 4.x reads them as is).

Conventions checked to be the same as transformers' OLMoE (tests/pipeline/export/test_hf_olmoe.py compares
logits): RMSNorm eps in fp32; QK-norm over the full q and k (all heads) before RoPE; RoPE rotate-half layout;
router Linear -> softmax -> top-k WITHOUT renormalisation (norm_topk_prob = false); SwiGLU experts
down(silu(gate x) * up x); no biases; untied embeddings; vocab_size = our padded_vocab_size.
Not exported: Over-Decoding heads (MTP modules / product heads; transformers has no place for them, and
they are not used for next-token prediction). A dense model (mlp: dense) is exported exactly as a 1-expert
top-1 MoE (softmax over one expert is 1). Models with Over-Encoding cannot be expressed in this layout:
use the consolidated export (docs/evaluation.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.config.model import ModelConfig
from pipeline.export.consolidate import write_folder_atomically

HF_WEIGHTS_FILE = "model.safetensors"


class ExportError(ValueError):
    """The model cannot be expressed in the requested layout; one line naming the config key."""


def check_exportable(cfg: ModelConfig) -> None:
    if cfg.over_encoding.enabled:
        raise ExportError("over_encoding.enabled: true — OlmoeForCausalLM has no n-gram input tables; export "
                          "the consolidated safetensors instead (launch/export.py --format consolidated)")
    if not cfg.qk_norm:
        raise ExportError("qk_norm: false — OlmoeForCausalLM always applies QK-norm")


def hf_config(cfg: ModelConfig, eos_id: int | None = None, pad_id: int | None = None,
              dtype: torch.dtype = torch.float32) -> dict:
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
        "bos_token_id": None,
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


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> OlmoeForCausalLM hub names (MTP / product heads dropped)."""
    check_exportable(cfg)
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "attention_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            out[f"{dst}self_attn.{name}.weight"] = state[f"{src}attention.{name}.weight"]
        if cfg.is_moe:
            out[dst + "mlp.gate.weight"] = state[src + "mlp.router.weight"]
            experts = {hf: state[f"{src}mlp.experts.{ours}"]
                       for hf, ours in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down"))}
            for e in range(cfg.n_experts):
                for hf, stacked in experts.items():
                    out[f"{dst}mlp.experts.{e}.{hf}.weight"] = stacked[e]
        else:
            out[dst + "mlp.gate.weight"] = torch.zeros(1, cfg.d_model)
            for hf, ours in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down")):
                out[f"{dst}mlp.experts.0.{hf}.weight"] = state[f"{src}mlp.{ours}.weight"]
    return out


def save_hf_olmoe(out_dir: str | Path, state: dict[str, torch.Tensor], cfg: ModelConfig, meta: dict,
                  eos_id: int | None = None, pad_id: int | None = None, dtype: torch.dtype = torch.float32,
                  overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(dtype).contiguous().clone() for k, v in hf_state_dict(state, cfg).items()}
    config = hf_config(cfg, eos_id, pad_id, dtype)

    def files(tmp: Path) -> None:
        save_file(tensors, str(tmp / HF_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "export.json").write_text(json.dumps({**meta, "layout": "hf-olmoe"}, indent=1) + "\n")
    return write_folder_atomically(out_dir, files, overwrite)
