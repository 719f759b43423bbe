"""`python -m data_prep stats`: tokens / documents per folder, and a run config's epochs per source."""
from __future__ import annotations

from tests.data_prep.conftest import run_cli
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import TINY_RUN


def test_folders_and_the_epochs_a_run_will_see(tmp_path):
    web = write_shard_folder(tmp_path / "web", {"train": random_documents(300, 512, 511, seed=1),
                                                "val": random_documents(10, 512, 511, seed=2)}, 512, 511)
    code = write_shard_folder(tmp_path / "code", {"train": random_documents(50, 512, 511, seed=3),
                                                  "val": random_documents(10, 512, 511, seed=4)}, 512, 511)
    rc, out, err = run_cli("stats", web, code, "--config", TINY_RUN, f"run_dir={tmp_path / 'run'}",
                           f"data.sources=[{{name: web, path: {web}, weight: 3}}, "
                           f"{{name: code, path: {code}, weight: 1, max_repetition: 2}}]", "train.max_steps=200")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{web}: tokenizer test-tokenizer (vocab 512")
    assert any(line.split()[:3] == ["train", "300", "documents"] for line in lines)
    assert "= 800 sequences of 32 tokens" in out
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  web ") or line.startswith("  code ")}
    assert rows["web"][1:3] == ["3", "0.750"] and rows["web"][5] == "600"
    assert rows["code"][1:3] == ["1", "0.250"] and rows["code"][5] == "200"
    per_epoch = int(rows["code"][4])
    assert float(rows["code"][6]) == round(200 / per_epoch, 2) and "EXCEEDED" in out


def test_nothing_to_report_and_a_missing_folder_are_one_line_errors(tmp_path):
    rc, _, err = run_cli("stats")
    assert rc == 2 and err.count("\n") == 1 and "--config" in err
    rc, _, err = run_cli("stats", tmp_path / "none")
    assert rc == 2 and err.count("\n") == 1 and "manifest.json: missing" in err


def test_index_is_built_offline_and_training_reuses_it(tmp_path):
    from pipeline.config.run import load_run_config
    from pipeline.data.loader import build_loaders
    from pipeline.data.manifest import read_manifest

    web = write_shard_folder(tmp_path / "web", {"train": random_documents(100, 512, 511, seed=1),
                                                "val": random_documents(10, 512, 511, seed=2)}, 512, 511)
    args = [TINY_RUN, f"run_dir={tmp_path / 'run'}", f"data.path={web}", "train.max_steps=100"]
    rc, out, err = run_cli("index", "--config", *args)
    assert rc == 0, err
    per_epoch = (read_manifest(web).totals["train"]["tokens"] - 1) // 32
    assert f"train: {-(-100 * 4 // per_epoch)} epoch(s) ready in" in out, out
    folder = next((web / "index_cache").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    cfg = load_run_config(args[0], args[1:])
    build_loaders(cfg.data, 512, cfg.train.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size, 1, 0, 1,
                  max_steps=cfg.train.max_steps)
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    rc, _, err = run_cli("index", "--config", *args, "data.index=memory")
    assert rc == 2 and err.count("\n") == 1 and "data.index='memory'" in err
