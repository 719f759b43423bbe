"""Parameter names and tensors between our model (pipeline/model, `OLMoE.state_dict()` names) and the two
transformers layouts of a HF export, in both directions (export, and eval / generate reading an export back).

native  transformers' `OlmoeForCausalLM` as the hub checkpoints of allenai/OLMoE-1B-7B name it: experts
        one by one (`mlp.experts.{e}.{gate,up,down}_proj.weight`); transformers 4.x reads them as they are,
        5.x fuses them while loading. Models without Over-Encoding; Over-Decoding heads are not part of it.
remote  the modules of hf_remote/modeling_over_tokenized_olmoe.py (loaded with trust_remote_code). Custom
        code gets no load-time conversion in transformers 5, so the file holds the modules' own names:
        experts fused as OlmoeExperts keeps them, gate_up_proj [E, 2H, D] = [w_gate ; w_up] along dim 1 and
        down_proj [E, D, H]; OE under `model.over_encoding.*`; MTP modules / product heads as in our model
        (`mtp.{d}.*`, `od_heads.{j}.*`) with each MTP block in the trunk's naming.
A dense model (mlp: dense) is one expert with top-1 routing in both (softmax over one expert is 1); its
router is a zero [1, D] matrix.
"""
from __future__ import annotations

import dataclasses

import torch

from pipeline.config.model import ModelConfig, OverDecodingConfig

NATIVE, REMOTE = "native", "remote"
EXPERT_NAMES = (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down"))


def uses_remote_code(cfg: ModelConfig) -> bool:
    """Whether transformers' own OlmoeForCausalLM cannot hold the model (`cfg` as it will be exported)."""
    return cfg.over_encoding.enabled or cfg.over_decoding.mode != "none" or not cfg.qk_norm


def without_od_heads(cfg: ModelConfig) -> ModelConfig:
    """`cfg` of the model exported without its Over-Decoding heads (they never affect next-token logits)."""
    return dataclasses.replace(cfg, over_decoding=OverDecodingConfig())


def _block_pairs(src: str, dst: str, cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our name, HF name) of a block's one-to-one tensors: norms, attention, router."""
    pairs = [(src + "attention_norm.weight", dst + "input_layernorm.weight"),
             (src + "ffn_norm.weight", dst + "post_attention_layernorm.weight")]
    names = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["q_norm", "k_norm"] if cfg.qk_norm else [])
    pairs += [(f"{src}attention.{n}.weight", f"{dst}self_attn.{n}.weight") for n in names]
    if cfg.is_moe:
        pairs.append((src + "mlp.router.weight", dst + "mlp.gate.weight"))
    return pairs


def _blocks(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our prefix, HF prefix) of every transformer block: the trunk, then each MTP module's block."""
    blocks = [(f"layers.{i}.", f"model.layers.{i}.") for i in range(cfg.n_layers)]
    if cfg.over_decoding.mode == "mtp":
        blocks += [(f"mtp.{d}.block.", f"mtp.{d}.block.") for d in range(cfg.over_decoding.depth)]
    return blocks


def _one_to_one(cfg: ModelConfig) -> list[tuple[str, str]]:
    pairs = [("embed.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"),
             ("lm_head.weight", "lm_head.weight")]
    oe = cfg.over_encoding
    if oe.enabled:
        names = ["table", "proj.weight"] + (["output_norm.weight"] if oe.output_norm else [])
        pairs += [(f"over_encoding.{n}", f"model.over_encoding.{n}") for n in names]
    od = cfg.over_decoding
    if od.mode == "mtp":
        names = ["hidden_norm.weight", "embed_norm.weight", "proj.weight"]
        names += ["output_norm.weight"] if od.output_norm == "per_module" else []   # DeepSeek-V3's own norm
        pairs += [(f"mtp.{d}.{n}", f"mtp.{d}.{n}") for d in range(od.depth) for n in names]
    elif od.mode == "product":
        names = ["out.weight"] + (["down.weight"] if od.head_dim > 0 else [])
        pairs += [(f"od_heads.{j}.{n}", f"od_heads.{j}.{n}") for j in range(od.n - 1) for n in names]
    for src, dst in _blocks(cfg):
        pairs += _block_pairs(src, dst, cfg)
    return pairs


def _our_experts(state: dict[str, torch.Tensor], src: str, cfg: ModelConfig) -> list[torch.Tensor]:
    """[w_gate, w_up] [E, H, D] and w_down [E, D, H] of one block (a dense MLP as one expert)."""
    if cfg.is_moe:
        return [state[f"{src}mlp.experts.{ours}"] for _, ours in EXPERT_NAMES]
    return [state[f"{src}mlp.{ours}.weight"][None] for _, ours in EXPERT_NAMES]


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """Our state dict -> the HF tensors of `layout`. Parameters `cfg` does not describe (Over-Decoding
    heads of a model exported without them) are left out."""
    out = {hf: state[ours] for ours, hf in _one_to_one(cfg)}
    for src, dst in _blocks(cfg):
        gate, up, down = _our_experts(state, src, cfg)
        if not cfg.is_moe:
            out[dst + "mlp.gate.weight"] = torch.zeros(1, cfg.d_model, dtype=gate.dtype)
        if layout == REMOTE:
            out[dst + "mlp.experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
            out[dst + "mlp.experts.down_proj"] = down
        else:
            for e in range(gate.shape[0]):
                for (hf, _), stacked in zip(EXPERT_NAMES, (gate, up, down)):
                    out[f"{dst}mlp.experts.{e}.{hf}.weight"] = stacked[e]
    return out


def from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig, layout: str, source: str) -> dict[str, torch.Tensor]:
    """The inverse of to_hf; a missing tensor is a KeyError naming `source` and the HF name."""
    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise KeyError(f"{source}: tensor {name} missing")
        return tensors[name]

    state = {ours: get(hf) for ours, hf in _one_to_one(cfg)}
    n_experts = cfg.n_experts if cfg.is_moe else 1
    for src, dst in _blocks(cfg):
        if layout == REMOTE:
            gate, up = get(dst + "mlp.experts.gate_up_proj").chunk(2, dim=1)
            parts = [gate, up, get(dst + "mlp.experts.down_proj")]
        else:
            parts = [torch.stack([get(f"{dst}mlp.experts.{e}.{hf}.weight") for e in range(n_experts)])
                     for hf, _ in EXPERT_NAMES]
        for (_, ours), stacked in zip(EXPERT_NAMES, parts):
            if cfg.is_moe:
                state[f"{src}mlp.experts.{ours}"] = stacked.contiguous()
            else:
                state[f"{src}mlp.{ours}.weight"] = stacked[0].contiguous()
    return state
