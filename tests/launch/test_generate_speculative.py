"""`launch/generate.py --speculative mtp`: the same greedy text as plain decoding, with the acceptance on stderr;
one-line errors for a model without MTP modules and for --no-cache."""
from __future__ import annotations

import json

import pytest
import torch

from launch.generate import main
from pipeline.config.model import load_model_config
from pipeline.export.consolidate import save_consolidated
from pipeline.model import build_model
from tests.helpers.multirank import REPO
from tests.pipeline.train.runs import VOCAB
from tests.reliability.test_reading_a_run import write_word_tokenizer


def export(folder, config: str):
    torch.manual_seed(0)
    cfg = load_model_config(REPO / "configs" / "model" / config, [f"vocab_size={VOCAB}", "init_std=0.2"])
    return save_consolidated(folder, build_model(cfg).state_dict(), cfg, {})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("speculative_cli")
    write_word_tokenizer(root / "tokenizer.json")
    return root, export(root / "ot", "tiny-olmoe-ot.yaml"), export(root / "oe", "tiny-olmoe-oe.yaml")


def run(capsys, checkpoint, tokenizer, *flags: str) -> tuple[int, str, str]:
    code = main(["--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--prompt", "t1 t2 t3",
                 "--prompt", "t9", "--max-new-tokens", "12", "--json", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_speculative_greedy_text_equals_plain(exports, capsys):
    root, ot, _ = exports
    code, plain, _ = run(capsys, ot, root / "tokenizer.json")
    assert code == 0
    code, spec, err = run(capsys, ot, root / "tokenizer.json", "--speculative", "mtp")
    assert code == 0 and spec == plain, err
    assert [len(json.loads(line)["tokens"]) for line in spec.splitlines()] == [12, 12]
    assert "MTP speculative:" in err and "drafts accepted" in err, err


@pytest.mark.parametrize("which, flags, message", [
    ("oe", [], "--speculative mtp: the model has no MTP modules"),
    ("ot", ["--no-cache"], "--speculative mtp verifies drafts against the KV cache: drop --no-cache")])
def test_one_line_errors(exports, capsys, which, flags, message):
    root, ot, oe = exports
    code, _, err = run(capsys, ot if which == "ot" else oe, root / "tokenizer.json", "--speculative", "mtp",
                       *flags)
    assert code == 2 and "\n" not in err and err.startswith("error: ") and message in err, err
