"""The start-of-run summary (pipeline/train/run_summary.py), without training: the data rows of one folder and
of a weighted mixture (tokens and documents from the manifests, epochs in train.max_steps), and the lines a
reader looks for; the counts are the inspector's (launch/inspect_model.py --run-config), not a second copy."""
from __future__ import annotations

import pytest

from launch.inspect_model import inspect_run_config
from pipeline.data.manifest import read_manifest
from pipeline.train.run_summary import SUMMARY_FILE, data_sources, inspect_run, summary_text, write_run_summary
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import EOS, TINY_RUN, VOCAB, tiny_config


def folder(path, docs: int, seed: int):
    write_shard_folder(path, {"train": random_documents(docs, VOCAB, EOS, seed=seed, distinct=24),
                              "val": random_documents(20, VOCAB, EOS, seed=seed + 10, distinct=24)}, VOCAB, EOS)
    return path


def test_one_folder_and_a_mixture(tmp_path):
    web, code = folder(tmp_path / "web", 200, 1), folder(tmp_path / "code", 100, 2)
    (one,) = data_sources(tiny_config(web, tmp_path / "run", "train.max_steps=50"))
    tokens = read_manifest(web).totals["train"]["tokens"]
    assert (one.name, one.tokens, one.docs, one.weight) == ("train", tokens, 200, 1.0)
    assert one.epochs == pytest.approx(50 * 4 / ((tokens - 1) // 32))   # 50 steps x 4 sequences of 32 tokens
    mix = tiny_config("", tmp_path / "run", "train.max_steps=50",
                      f"data.sources=[{{name: web, path: {web}, weight: 3}}, {{name: code, path: {code}, weight: 1}}]")
    rows = {s.name: s for s in data_sources(mix)}
    assert rows["web"].weight == 0.75 and rows["code"].weight == 0.25 and rows["code"].docs == 100
    assert rows["web"].epochs == pytest.approx(0.75 * one.epochs)
    text = summary_text(mix, inspect_run(mix, 1), list(rows.values()), "fresh start")
    assert "web" in text and "code" in text and "0.750" in text


def test_summary_lines_agree_with_the_inspector_and_are_saved(tmp_path, capsys):
    cfg = tiny_config(folder(tmp_path / "data", 100, 3), tmp_path / "run")
    text = write_run_summary(cfg, 1, str(TINY_RUN), "fresh start", oe_rows_per_rank=16408)
    assert (tmp_path / "run" / SUMMARY_FILE).read_text() == text == capsys.readouterr().out
    report = inspect_run_config(str(TINY_RUN), [f"data.path={tmp_path / 'data'}"], 1, None)
    assert f"total {report['params_total'] / 1e3:.1f}k ({report['params_total']:,})" in text
    assert f"config          {TINY_RUN}" in text
    assert "layout          world 1 = dp 1 x tp 1, ep 1, ZeRO-0, precision fp32; OE tables whole on each rank " \
           "(16,408 rows on this rank)" in text
    assert f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}" in text
