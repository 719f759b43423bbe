"""Reading a trained run with eval / generate / export, through the real command lines in fresh processes:
- from another working directory than the one it was trained in, with relative data.path and tokenizer
  paths (issue 14, class 9: the recorded paths resolve the same from anywhere);
- on data from another tokenizer than the one the model was trained with (class 7: refused naming both);
- with flags that cannot mean anything (class 6: one line naming the flag, exit 2, before any work).

One tiny run is trained once for the module, in its own working directory W, exactly as a user would:
`cd W && python launch/train.py ... data.path=shards run_dir=run`, with a manifest whose tokenizer path is
relative to W as data_prep records it (`tok/tokenizer.json`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.manifest import load_manifest, write_manifest
from pipeline.data.manifest import sha256_file as file_sha256
from tests.helpers.multirank import REPO
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import EOS, TINY_RUN, VOCAB


def _env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def cli(script: str, *args, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / script), *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if "real_accelerator" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def write_word_tokenizer(path: Path) -> None:
    """A real HF tokenizers file: words t0..t510 and the special `</s>` = 511 (the fixture's EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"</s>": EOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def shards_with_tokenizer(folder: Path, tokenizer_path: str, sha256: str, kind: str = "hf_tokenizers") -> Path:
    write_shard_folder(folder, {"train": random_documents(300, VOCAB, EOS, seed=1, distinct=24),
                                "val": random_documents(40, VOCAB, EOS, seed=2, distinct=24)}, VOCAB, EOS)
    m = load_manifest(folder)
    write_manifest(folder, dataclasses.replace(
        m, tokenizer=dataclasses.replace(m.tokenizer, path=tokenizer_path, sha256=sha256, kind=kind)))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """W with tok/tokenizer.json, shards/ (tokenizer recorded as 'tok/tokenizer.json') and run/ trained in W."""
    w = tmp_path_factory.mktemp("trained_here")
    write_word_tokenizer(w / "tok" / "tokenizer.json")
    shards_with_tokenizer(w / "shards", "tok/tokenizer.json", file_sha256(w / "tok" / "tokenizer.json"))
    proc = cli("train.py", "--config", TINY_RUN, "data.path=shards", "run_dir=run", "train.max_steps=2",
               "checkpoint.every=2", "eval.every=0", "log.tensorboard=false", cwd=w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def test_eval_generate_export_of_a_run_work_from_another_directory(work, elsewhere, tmp_path):
    run = work / "run"
    val = cli("eval.py", "--checkpoint", run, "--tasks", "none", "--val-sequences", 4, cwd=elsewhere)
    assert val.returncode == 0, val.stderr[-3000:]
    result = json.loads(val.stdout)
    assert result["data"] == str((work / "shards").resolve()) and result["validation"]["val_sequences"] == 4

    gen = cli("generate.py", "--checkpoint", run, "--prompt", "t1 t2", "--max-new-tokens", 3, "--json",
              cwd=elsewhere)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert json.loads(gen.stdout.splitlines()[0])["prompt"] == "t1 t2"

    export = cli("export.py", "--checkpoint", run, "--out", tmp_path / "export", cwd=elsewhere)
    assert export.returncode == 0, export.stderr[-3000:]
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["data"]["path"] == str((work / "shards").resolve())          # absolute in the export
    assert info["tokenizer"]["path"] == str((work / "tok" / "tokenizer.json").resolve())

    # the export, read from yet another directory, finds the same data and gives the same loss
    again = cli("eval.py", "--checkpoint", tmp_path / "export", "--tasks", "none", "--val-sequences", 4, cwd="/")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["validation"] == result["validation"]


def test_eval_refuses_data_from_another_tokenizer(work, elsewhere):
    other = shards_with_tokenizer(elsewhere / "other", "other.model", "cd" * 32, kind="sentencepiece")
    line = one_error_line(cli("eval.py", "--checkpoint", work / "run", "--data", other, "--tasks", "none",
                              cwd=elsewhere))
    trained = file_sha256(work / "tok" / "tokenizer.json")
    assert str(other / "manifest.json") in line and "cdcdcdcdcdcdcdcd" in line and trained[:16] in line, line
    assert "trainer_state.json" in line and "--data" in line, line


def _main(script: str):
    spec = importlib.util.spec_from_file_location(f"cli_{script}", REPO / "launch" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# (script, flags, what the one line must say); each ran (exit 0) on the old code, or failed without the flag
FLAGS = [
    ("generate", ["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 1, got -3"),
    ("generate", ["--temperature", "-0.5"], "--temperature: must be >= 0"),
    ("generate", ["--temperature", "0.7", "--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
    ("generate", ["--top-p", "0.9"], "--top-k / --top-p apply only when sampling"),
    ("eval", ["--val-sequences", "0", "--tasks", "none"], "--val-sequences: must be >= 1, got 0"),
    ("eval", ["--limit", "0", "--tasks", "none"], "--limit: must be >= 1, got 0"),
]


@pytest.mark.parametrize("script,flags,message", FLAGS, ids=[" ".join([s, *f[:2]]) for s, f, _ in FLAGS])
def test_nonsensical_generate_and_eval_flags_are_one_line_errors(work, script, flags, message, capsys):
    args = ["--checkpoint", str(work / "run"), *flags]
    if script == "generate":
        args += ["--prompt", "t1", "--tokenizer", str(work / "tok" / "tokenizer.json")]
    else:
        args += ["--data", str(work / "shards")]
    assert _main(script)(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err, err
