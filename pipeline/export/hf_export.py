"""Write a HF export folder for any model, loadable with `transformers.AutoModelForCausalLM.from_pretrained`:

    config.json             OlmoeForCausalLM (native layout) when transformers' own class holds the model,
                            else over_tokenized_olmoe with auto_map (remote layout, trust_remote_code=True);
                            both also carry our model config (hf_olmoe.PIPELINE_CONFIG_KEY)
    configuration_over_tokenized_olmoe.py, modeling_over_tokenized_olmoe.py   (remote layout: hf_remote/)
    model.safetensors       tensors in the layout's names (hf_layout.py), fp32 or --dtype
    generation_config.json  bos / eos / pad ids (native layout: the embedding's padding ids suppressed)
    tokenizer.json, tokenizer_config.json (+ tokenizer.model)   when the tokenizer is known (hf_tokenizer.py)
    README.md               model card (model_card.py)
    export.json             provenance as in a consolidated export; its tokenizer record names the copy here
The folder is written under a temporary name and renamed (complete or absent), with checksums.json, so our
own loaders (pipeline/export/load.py) verify and read it like a consolidated export.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pipeline.config.model import ModelConfig
from pipeline.data.tokenizer import Tokenizer
from pipeline.export.consolidate import EXPORT_INFO_FILE, write_folder_atomically
from pipeline.export.hf_layout import NATIVE, REMOTE, to_hf, uses_remote_code, without_od_heads
from pipeline.export.hf_olmoe import HF_WEIGHTS_FILE, REMOTE_MODULES, export_config
from pipeline.export.hf_tokenizer import exported_tokenizer_file, write_hf_tokenizer
from pipeline.export.model_card import model_card

REMOTE_DIR = Path(__file__).resolve().parent / "hf_remote"
LAYOUT_NAMES = {NATIVE: "hf-olmoe", REMOTE: "hf-over-tokenized-olmoe"}


def generation_config(cfg: ModelConfig, special_ids: dict, layout: str) -> dict:
    config = {k: special_ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config["do_sample"] = False
    if layout == NATIVE and cfg.padded_vocab_size > cfg.vocab_size:
        # embedding rows no token maps to: never generate them (the remote code masks their logits itself)
        config["suppress_tokens"] = list(range(cfg.vocab_size, cfg.padded_vocab_size))
    return config


def save_hf(out_dir: str | Path, state: dict[str, torch.Tensor], cfg: ModelConfig, meta: dict,
            tokenizer: Tokenizer | None = None, drop_od_heads: bool = False, dtype: torch.dtype = torch.float32,
            overwrite: bool = False, special_ids: dict | None = None, record: dict | None = None) -> Path:
    """`special_ids` (bos/eos/pad_token_id) when no tokenizer is given; `record`: model_card.training_record."""
    exported = without_od_heads(cfg) if drop_od_heads else cfg
    layout = REMOTE if uses_remote_code(exported) else NATIVE
    tensors = {k: v.detach().to(dtype).contiguous().clone() for k, v in to_hf(state, exported, layout).items()}
    tok_record = meta.get("tokenizer") if tokenizer is not None else None

    def files(tmp: Path) -> None:
        ids = dict(special_ids or {})
        if tokenizer is not None:
            ids = write_hf_tokenizer(tmp, tokenizer, cfg.max_seq_len)
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / HF_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(export_config(exported, layout, ids, dtype), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(cfg, ids, layout), indent=2) + "\n")
        if layout == REMOTE:
            for module in REMOTE_MODULES:
                shutil.copyfile(REMOTE_DIR / f"{module}.py", tmp / f"{module}.py")
        info = {**meta, "layout": LAYOUT_NAMES[layout], "dtype": str(dtype).replace("torch.", ""),
                "over_decoding_heads": ("none" if cfg.over_decoding.mode == "none"
                                        else "dropped" if drop_od_heads else "kept")}
        if tokenizer is not None:
            described = tokenizer.describe()
            # relative: resolved under the export folder wherever it is moved (recorded_paths.py)
            info["tokenizer"] = {**(tok_record or {}), **described, "path": exported_tokenizer_file(tokenizer)}
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        card = model_card(cfg, exported, meta, record or {"step": meta.get("step")},
                          info.get("tokenizer"), layout == REMOTE)
        (tmp / "README.md").write_text(card)
    return write_folder_atomically(out_dir, files, overwrite)
