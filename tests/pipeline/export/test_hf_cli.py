"""The HF export of a real run, through the command lines: data_prep (sentencepiece BPE on two plays) ->
launch/train.py (tiny OE + MTP model, 6 steps) -> launch/export.py --format hf. The folder has the model card
and the tokenizer; launch/eval.py and launch/generate.py take it as --checkpoint and give the numbers and
tokens of the checkpoint itself; transformers' generate() (KV cache + n-gram context) gives
launch/generate.py's greedy tokens; bad arguments are one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

from data_prep.cli import main as data_prep
from launch.eval import main as eval_main
from launch.export import main as export_main
from launch.generate import main as generate_main
from tests.pipeline.export.hf_helpers import TEXTS, TRAIN_PLAYS, load_hf, run_cli as _run, train_spm, transformers
from tests.pipeline.train.runs import launch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:over_encoding.m")]
PROMPTS = ["To be, or not to be", "Enter the ghost", "My lord"]
STEPS = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf_cli")
    tok = train_spm(tmp / "tok.model")
    rc, _, err = _run(data_prep, "shard", *[TEXTS / n for n in TRAIN_PLAYS], "--doc-split", "blank-lines", "-t", tok,
                      "-o", tmp / "shards", "--val-fraction", "0.05", "--no-progress")
    assert rc == 0, err
    launch(["--config", "configs/run/tiny-cpu.yaml", f"data.path={tmp / 'shards'}", f"run_dir={tmp / 'run'}",
            "model.vocab_size=1000", "model.padded_vocab_size=1024", f"train.max_steps={STEPS}",
            f"checkpoint.every={STEPS}", "eval.every=0", "eval.at_end=false"], launcher="python")
    rc, out, err = _run(export_main, "--checkpoint", tmp / "run", "--out", tmp / "hf", "--format", "hf")
    assert rc == 0, err
    assert "[hf, fp32]" in out
    return tmp


def test_export_folder(run):
    hf = run / "hf"
    names = {p.name for p in hf.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md", "tokenizer.json",
            "tokenizer.model", "tokenizer_config.json", "modeling_over_tokenized_olmoe.py",
            "configuration_over_tokenized_olmoe.py", "export.json", "checksums.json"} == names
    card = (hf / "README.md").read_text()
    for text in (f"Step {STEPS}, {STEPS * 4 * 32:,} tokens seen", "n = 3, k = 2, m = 4,099", "MTP-DS, depth 1",
                 "```yaml", "seq_len: 32", "sentencepiece"):
        assert text in card, text
    generation = json.loads((hf / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 3
    assert "suppress_tokens" not in generation          # the remote code masks ids 1000..1023 itself
    assert json.loads((hf / "export.json").read_text())["tokenizer"]["path"] == "tokenizer.model"


def test_launch_eval_reads_the_hf_export(run):
    results = {}
    for name in ("run", "hf"):
        rc, out, err = _run(eval_main, "--checkpoint", run / name, "--tasks", "arc_easy,piqa", "--limit", "6")
        assert rc == 0, err
        results[name] = json.loads(out)
    val_run, val_hf = results["run"]["validation"], results["hf"]["validation"]
    assert val_hf["val_tokens"] == val_run["val_tokens"] > 0
    assert val_hf["val_loss"] == pytest.approx(val_run["val_loss"], abs=1e-6)   # the same weights and data
    for task in ("arc_easy", "piqa"):
        for key in ("acc_raw", "acc_per_token", "acc_per_char"):
            assert results["hf"]["tasks"][task][key] == results["run"]["tasks"][task][key]


def _launch_generate(folder, max_new: int) -> list[list[int]]:
    args = ["--checkpoint", folder, "--max-new-tokens", max_new, "--json"]
    for p in PROMPTS:
        args += ["--prompt", p]
    rc, out, err = _run(generate_main, *args)
    assert rc == 0, err
    return [json.loads(line)["tokens"] for line in out.splitlines()]


def test_hf_generate_equals_launch_generate(run):
    ours = _launch_generate(run / "run", 24)
    assert _launch_generate(run / "hf", 24) == ours          # launch/generate.py reads the HF folder
    tok = transformers.AutoTokenizer.from_pretrained(run / "hf")
    model = load_hf(run / "hf")
    batch = tok(PROMPTS, return_tensors="pt", padding=True)    # left padding (tokenizer_config.json)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    theirs = []
    for row in out[:, batch.input_ids.shape[1]:].tolist():
        theirs.append(row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    print("greedy tokens:", ours)
    assert theirs == ours
    assert sum(map(len, ours)) > 24                            # the rows really decoded


def test_bad_arguments_are_one_line_errors(run, tmp_path):
    other = train_spm(tmp_path / "other.model", vocab_size=900)
    cases = [(["--tokenizer", other], "is not the tokenizer the model was trained with"),
             (["--out", run / "hf"], "already exists")]
    for extra, message in cases:
        args = ["--checkpoint", run / "run", "--out", tmp_path / "x", "--format", "hf", *extra]
        rc, _, err = _run(export_main, *args)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = _run(export_main, "--checkpoint", run / "run", "--out", tmp_path / "y", "--drop-od-heads")
    assert rc == 2 and "--drop-od-heads applies to --format hf only" in err


def test_eval_numbers_and_dropped_heads_in_the_card(run, tmp_path):
    rc, _, err = _run(eval_main, "--checkpoint", run / "run", "--tasks", "piqa", "--limit", "3",
                      "--out", tmp_path / "eval.json")
    assert rc == 0, err
    rc, _, err = _run(export_main, "--checkpoint", run / "run", "--out", tmp_path / "hf", "--format", "hf",
                      "--drop-od-heads", "--eval-json", tmp_path / "eval.json")
    assert rc == 0, err
    card = (tmp_path / "hf" / "README.md").read_text()
    piqa = json.loads((tmp_path / "eval.json").read_text())["tasks"]["piqa"]
    assert f"| piqa | 3 | {piqa['primary']:.4f} (per_char) |" in card and "Validation loss" in card
    assert "dropped from this export" in card
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["mtp_depth"] == 0
