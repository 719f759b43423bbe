import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.inspect_model import inspect_config, main
from pipeline.config.model import load_model_config
from pipeline.model.flops import param_counts

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
    # OE tables are fp32 storage in every precision (cast at use), row-sharded over dp = 64
    assert r["per_rank_bytes"]["oe_tables_params"] == round(4 * r["params_oe_tables"] / 64)
    bad = subprocess.run([sys.executable, "launch/inspect_model.py", "--config", "configs/model/olmoe-7b.yaml",
                          "-o", "over_encoding.enabled=true", "-o", "over_encoding.m=100560"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "over_encoding.m" in bad.stderr and "multiple of vocab_size" in bad.stderr


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_config_reads_layout_zero_precision_and_batch(capsys):
    """tiny-cpu (tiny-olmoe-ot, global batch 4 x 32 tokens) on 2 GPUs with ep = 2, ZeRO-2, bf16: by hand."""
    r = run_json(capsys, "--run-config", "configs/run/tiny-cpu.yaml", "--world", "2", "-o", "parallel.ep=2",
                 "-o", "deepspeed.zero_stage=2", "-o", "deepspeed.precision=bf16")
    assert r["layout"] == {"dp": 2, "tp": 1, "ep": 2, "param_dtype": "bf16", "zero_stage": 2,
                           "table_optimizer": "adamw", "oe_shard_group": "dp", "tokens_per_rank_step": 64}
    assert r["run"]["gradient_accumulation_steps"] == 1 and r["run"]["world"] == 2
    c = param_counts(load_model_config(REPO / "configs/model/tiny-olmoe-ot.yaml"))
    t, x = c["oe_tables"], c["experts"]
    dense = c["total"] - t - x
    kinds = r["memory_by_kind"]
    assert kinds["dense"]["bytes_per_param"] == {"weights": 4, "master": 2, "optimizer": 4, "grad_accum": 0,
                                                 "grads": 2, "bf16_copies": 2}
    assert kinds["experts"]["params"] == x / 2 and kinds["experts"]["held_bytes"] == 12 * x / 2
    assert kinds["oe_tables"]["params"] == t / 2 and kinds["oe_tables"]["peak_bytes"] == 16 * t / 2
    assert r["per_rank_bytes"]["held"] == round(10 * dense + 12 * x / 2 + 12 * t / 2)
    assert r["per_rank_bytes"]["total"] == round(14 * dense + 18 * x / 2 + 16 * t / 2)


def test_run_config_flags_override_and_errors(capsys):
    r = run_json(capsys, "--run-config", "configs/run/tiny-cpu.yaml", "--layout", "dp=1", "--zero", "3",
                 "--param-dtype", "bf16-master-weights")
    assert (r["layout"]["zero_stage"], r["layout"]["param_dtype"], r["run"]["world"]) == (3, "bf16-master-weights", 1)
    for argv, key in ((["--world", "3", "-o", "parallel.ep=2"], "parallel"),  # 3 ranks cannot hold ep = 2
                      (["--world", "8"], "train.global_batch_size"),          # 4 sequences over 8 x 2
                      ([], "--world")):
        assert main(["--run-config", "configs/run/tiny-cpu.yaml", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and key in err, err
