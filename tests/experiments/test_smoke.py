"""Every experiment command runs end to end in --smoke mode (a few steps per run) and the report renders.

All Shakespeare experiments share one results folder, so runs common to several experiments (the baseline,
OE) train once, as in the real queue. The demo shards are prepared first
(scripts/prepare_demo_data.sh)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def demo_shards():
    """Experiments 1-4 read data/exp_v1024 (experiments/prepare_data.sh), the investigation the demo corpus
    (as `make demo` prepares it); both idempotent, ~10 s."""
    for script in ("scripts/prepare_demo_data.sh", "experiments/prepare_data.sh"):
        subprocess.run(["bash", str(ROOT / script)], cwd=ROOT, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def run(module: str, out: Path, *extra: str) -> str:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--smoke", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("module", ["oe_vs_baseline", "hierarchy", "collision", "table_size"])
def test_shakespeare_experiment_smoke(module, out):
    run(module, out)
    result = json.loads((out / f"{module}.json").read_text())
    assert result["rows"] and (out / f"{module}.csv").is_file() and (out / "img" / f"{module}.png").is_file()
    for record in (out / "runs").glob("*.json"):
        rec = json.loads(record.read_text())
        assert rec["final_val_loss"] > 0 and any(o.startswith("train.seed=") for o in rec["overrides"])


def test_cfg_experiment_smoke(out):
    run("cfg_experiment", out, "--jobs", "2")           # the process-pool path
    rows = json.loads((out / "cfg.json").read_text())["rows"]
    assert {(r["size"], r["variant"]) for r in rows} == {(s, v) for s in ("tiny", "small", "large")
                                                          for v in ("1gram", "3gram_in", "3gram_out")}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    cost = json.loads((out / "cfg.json").read_text())["cost"]     # the paper-size model's measured step time
    assert cost["paper_small"]["params"] > 2_000_000 and cost["paper_small"]["s_per_step"] > 0
    assert json.loads((out / "cfg.json").read_text())["timing"]["runs"] == 9


def test_investigate_smoke(out):
    run("investigate", out, "--only", "oe_lr5", "--jobs", "2")
    rows = json.loads((out / "v8192" / "investigation.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "oe", "oe_lr5"] and rows[2]["delta"] is not None


def test_report_renders_from_results(out, tmp_path):
    if not (out / "cfg.json").is_file():
        pytest.skip("needs the smoke results of the other tests")
    target = tmp_path / "results.md"
    subprocess.run([sys.executable, "-m", "experiments.report", "--results", str(out), "--output", str(target)],
                   cwd=ROOT, check=True, timeout=120)
    text = target.read_text()
    for heading in ("Findings at a glance", "1. Baseline vs OE vs OT", "2. n-gram hierarchy", "3. Collision",
                    "4. Table-size", "5. Synthetic CFG", "Investigation"):
        assert heading in text
