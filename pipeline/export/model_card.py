"""README.md (model card) of a HF export: architecture, Over-Encoding n / k / m, Over-Decoding heads (kept or
dropped), tokenizer, training (step, tokens seen, the run config) and the evaluation numbers that are known.

What is known comes from the export's source (`training_record`): a checkpoint's trainer_state.json and
config.yaml, the in-loop zero-shot results of that step (run_dir/downstream/step_N.json), and a
launch/eval.py --out JSON given to launch/export.py --eval-json.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.model import ModelConfig
from pipeline.export.hf_olmoe import ExportError
from pipeline.train.checkpoint import CONFIG_FILE, STATE_FILE


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def training_record(meta: dict, eval_json: str | None = None) -> dict:
    """{step, tokens_seen, run_config (YAML text), evaluation} of the export's source, as far as known."""
    source = Path(str(meta.get("source") or ""))
    state = _read_json(source / STATE_FILE)
    record = {"step": meta.get("step", state.get("step")), "tokens_seen": state.get("tokens_seen")}
    if (source / CONFIG_FILE).is_file():
        record["run_config"] = (source / CONFIG_FILE).read_text()
    evaluation = {}
    if record["step"] is not None:       # <run_dir>/checkpoints/step_N -> <run_dir>/downstream/step_N.json
        in_loop = _read_json(source.parent.parent / "downstream" / f"step_{record['step']}.json")
        if in_loop:
            evaluation["in-loop zero-shot (run_dir/downstream)"] = in_loop
    if eval_json:
        results = _read_json(Path(eval_json))
        if not results:
            raise ExportError(f"--eval-json {eval_json}: not a readable launch/eval.py JSON object")
        evaluation[f"launch/eval.py ({Path(eval_json).name})"] = results
    record["evaluation"] = evaluation
    return record


def _architecture(cfg: ModelConfig) -> list[str]:
    mlp = (f"MoE, {cfg.n_experts} experts x SwiGLU {cfg.expert_hidden}, top-{cfg.top_k}, softmax router "
           "without renormalisation" if cfg.is_moe else f"dense SwiGLU {cfg.dense_hidden}")
    rows = [("layers", cfg.n_layers), ("d_model", cfg.d_model), ("heads", f"{cfg.n_heads} (MHA)"), ("MLP", mlp),
            ("vocabulary", f"{cfg.vocab_size} (embedding rows {cfg.padded_vocab_size})"),
            ("max_seq_len", cfg.max_seq_len), ("RoPE theta", cfg.rope_theta),
            ("QK-norm", "full q and k before RoPE" if cfg.qk_norm else "off"), ("RMSNorm eps", cfg.norm_eps)]
    return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]


def _over_encoding(cfg: ModelConfig) -> list[str]:
    oe = cfg.over_encoding
    if not oe.enabled:
        return ["Off: the input embedding is the token embedding."]
    orders = oe.table_orders()
    return [f"n = {oe.n}, k = {oe.k}, m = {oe.m:,}: {oe.num_tables} hashed n-gram tables (orders "
            f"{', '.join(map(str, orders))}; table t has m + 2t rows and width {cfg.d_model // oe.num_tables}), "
            f"{sum(oe.moduli()) * (cfg.d_model // oe.num_tables):,} table parameters. Input embedding = "
            f"(E[x_i] + proj(concat of the table rows)) / {1 + oe.num_tables}"
            + ("" if oe.unigram else " without E[x_i]") + (f", n-gram part scaled by {oe.output_scale}"
                                                            if oe.output_scale != 1 else "")
            + (", n-gram part RMS-normed" if oe.output_norm else "") + ".",
            "", "Each row of a batch is one document: the n-gram context starts at its first token (positions "
            "with attention_mask 0 hash as \"before the start\"). Training reset the context at document "
            f"boundaries inside packed sequences (reset_at_doc: {str(oe.reset_at_doc).lower()}), so pass "
            "documents as separate rows."]


def _over_decoding(cfg: ModelConfig, exported: ModelConfig) -> list[str]:
    od = cfg.over_decoding
    if od.mode == "none":
        return ["None (the model was trained with next-token prediction only)."]
    what = (f"MTP-DS, depth {od.depth} (module d predicts token i+d+1 through the shared final norm and head)"
            if od.mode == "mtp" else f"product-form heads j = 2..{od.n} predicting token i+j"
            + (f" (Linear D -> {od.head_dim} first)" if od.head_dim else ""))
    if exported.over_decoding.mode == "none":
        return [f"Trained with {what}; the heads were dropped from this export (launch/export.py --drop-od-heads)."]
    return [f"{what}: exported (`mtp.*` / `od_heads.*`), never run by `forward()` / `generate()`; "
            "`model.over_decoding_logits(input_ids)` returns their logits over whole rows."]


def _evaluation(evaluation: dict) -> list[str]:
    if not evaluation:
        return ["Not evaluated at export time (`python launch/eval.py --checkpoint EXPORT`, or lm-eval below)."]
    lines = []
    for where, res in evaluation.items():
        lines += [f"{where}:", "", "| task | items | primary | acc_raw | acc_per_char |", "| --- | --- | --- | --- | --- |"]
        for task, r in (res.get("tasks") or {}).items():
            lines.append(f"| {task} | {r.get('items')} | {r.get('primary', 0):.4f} ({r.get('primary_normalisation')}) "
                         f"| {r.get('acc_raw', 0):.4f} | {r.get('acc_per_char', 0):.4f} |")
        if "downstream" in res:
            lines.append(f"| downstream (mean primary) | | {res['downstream']:.4f} | | |")
        val = res.get("validation") or {}
        if "val_loss" in val:
            lines += ["", f"Validation loss {val['val_loss']:.4f}, perplexity {val['val_ppl']:.2f} "
                      f"({val.get('val_tokens')} tokens)"]
        lines.append("")
    return lines


def model_card(cfg: ModelConfig, exported: ModelConfig, meta: dict, record: dict, tokenizer: dict | None,
               remote: bool) -> str:
    """README.md text. `cfg` is the trained model, `exported` what the folder holds (heads maybe dropped)."""
    load = ("AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)   # modeling_over_tokenized_olmoe.py"
            if remote else "AutoModelForCausalLM.from_pretrained(path)             # transformers' OlmoeForCausalLM")
    tokens = record.get("tokens_seen")
    lines = ["---", "library_name: transformers", "tags: [olmoe, mixture-of-experts, over-tokenized, over-encoding]",
             "---", "", f"# {cfg.name}", ""]
    if cfg.note:
        lines += [cfg.note, ""]
    lines += ["An OLMoE mixture-of-experts language model" + (" with Over-Encoding (hashed n-gram input embeddings, "
              "Over-Tokenized Transformer, arXiv 2501.16975)" if cfg.over_encoding.enabled else "")
              + f", exported from `{meta.get('source')}` (step {record.get('step')}).", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(path" + (", trust_remote_code=True)   # else an interactive "
                                                            "session is asked about the model's code"
                                                            if remote else ")"), f"model = {load}",
              "out = model.generate(**tok([\"To be, or not\"], return_tensors=\"pt\"), max_new_tokens=20)", "```", "",
              "## Architecture", "", *_architecture(exported), "",
              "## Over-Encoding", "", *_over_encoding(cfg), "",
              "## Over-Decoding", "", *_over_decoding(cfg, exported), "",
              "## Tokenizer", ""]
    if tokenizer:
        lines.append(f"{tokenizer.get('kind')} (sha256 {tokenizer.get('sha256')}), vocabulary {tokenizer.get('vocab_size')}"
                     f"; EOS id {tokenizer.get('eos_id')} ends every training document and also serves as BOS; "
                     "nothing is added to encoded text.")
    else:
        lines.append("Not included (the trained tokenizer was not reachable at export time).")
    lines += ["", "## Training", "", f"Step {record.get('step')}" + (f", {int(tokens):,} tokens seen" if tokens else "")
              + "."]
    if record.get("run_config"):
        lines += ["", "Run config:", "", "```yaml", record["run_config"].rstrip(), "```"]
    lines += ["", "## Evaluation", "", *_evaluation(record.get("evaluation") or {}),
              "", "lm-evaluation-harness (offline task YAMLs of the training repository, configs/lm_eval):", "",
              "```bash", "HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=PATH"
              + (",trust_remote_code=True" if remote else "")
              + " --tasks olmo_arc_easy,olmo_arc_challenge,olmo_piqa,olmo_hellaswag --include_path configs/lm_eval",
              "```", ""]
    return "\n".join(lines)

