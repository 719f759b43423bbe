import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.inspect_model import inspect_config
from pipeline.config.model import load_model_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["olmoe-1.3b-ot12.8m", "tiny-olmoe-ot", "tiny-dense"])
def test_meta_counts_agree_with_analytic(name):
    report = inspect_config(load_model_config(REPO / f"configs/model/{name}.yaml"))  # raises on mismatch
    assert report["params_total"] >= report["params_active"] > 0


def test_cli_json_and_bad_input():
    cmd = [sys.executable, "launch/inspect_model.py", "--config", "configs/model/olmoe-7b-oe12.8m.yaml", "--json",
           "--layout", "dp=64,ep=8"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("params_total", "params_active", "params_embedding", "params_over_encoding", "flops_per_token"):
        assert isinstance(r[key], int)
    assert r["per_rank_bytes"]["oe_tables_params"] == 2 * r["params_oe_tables"] // 64
    bad = subprocess.run([sys.executable, "launch/inspect_model.py", "--config", "configs/model/olmoe-7b.yaml",
                          "-o", "over_encoding.enabled=true", "-o", "over_encoding.m=100560"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "over_encoding.m" in bad.stderr and "multiple of vocab_size" in bad.stderr
