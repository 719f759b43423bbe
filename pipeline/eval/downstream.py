"""Run the zero-shot tasks and assemble the JSON result: per task the accuracies under every normalisation,
the primary one (OLMo's choice per task) and its name; "downstream" = mean primary accuracy of the paper's
five tasks (MMLU-var, HellaSwag, ARC-Challenge, ARC-Easy, PIQA), present only when all five were run."""
from __future__ import annotations

import time

from pipeline.eval.multiple_choice import accuracy, score_items
from pipeline.eval.tasks import DOWNSTREAM_TASKS, load_task, primary_normalisation


def evaluate_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, batch_tokens: int = 8192,
                   assets_root=None, keep_items: bool = False, split_ranks: bool = True) -> dict:
    results: dict = {"tasks": {}}
    for name in tasks:
        t0 = time.perf_counter()
        items = load_task(name, limit, assets_root)
        scores = score_items(model, tokenizer, items, batch_tokens, split_ranks=split_ranks)
        accs = accuracy(scores)
        norm = primary_normalisation(name)
        entry = {**accs, "primary": accs[f"acc_{norm}"], "primary_normalisation": norm,
                 "items": len(items), "seconds": round(time.perf_counter() - t0, 2)}
        if keep_items:
            entry["scores"] = [{"id": s.item_id, "label": s.label, "logprobs": s.logprobs, "n_tokens": s.n_tokens,
                                "n_chars": s.n_chars} for s in scores]
        results["tasks"][name] = entry
    if all(t in results["tasks"] for t in DOWNSTREAM_TASKS):
        results["downstream"] = sum(results["tasks"][t]["primary"] for t in DOWNSTREAM_TASKS) / len(DOWNSTREAM_TASKS)
    return results
