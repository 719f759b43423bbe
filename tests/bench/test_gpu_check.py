"""bench/gpu_check.py without a GPU: the --cpu-smoke mode runs the CPU-runnable checks of the GPU readiness
battery on tiny shapes (gloo) and reports the CUDA-only ones as SKIP; a check that raises is a FAIL row, not
the end of the battery; without --cpu-smoke and without a GPU the command refuses with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import bench.gpu_check as gc
from bench.gpu_check import CHECKS, Check, child_main

REPO = Path(__file__).resolve().parents[2]
CPU_CHECKS = ["train", "grouped_gemm", "attention", "memory"]


def test_cpu_smoke_table_and_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--json", str(out), "--workdir",
                           str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["bench"] == "gpu_check" and record["mode"] == "cpu-smoke" and record["passed"]
    checks = {c["name"]: c for c in record["checks"]}
    assert list(checks) == [c.name for c in CHECKS]
    for c in record["checks"]:
        assert c["status"] in ("PASS", "FAIL", "SKIP") and isinstance(c["summary"], str)
        assert set(c) >= {"name", "title", "status", "summary", "numbers", "seconds", "budget_s"}
    assert {n: checks[n]["status"] for n in checks} == {**dict.fromkeys(CPU_CHECKS, "PASS"),
                                                        "p5": "SKIP", "ep2": "SKIP"}
    assert "needs CUDA" in checks["p5"]["summary"] and "needs CUDA" in checks["ep2"]["summary"]
    # the table: a header, then one row per check with its status
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("GPU readiness battery (cpu-smoke)")
    for name, c in checks.items():
        assert any(line.split()[:2] == [name, c["status"]] for line in lines), name
    assert any(line.startswith("JSON {") for line in lines)

    train = checks["train"]["numbers"]
    assert train["backend"] == "gloo" and train["steps"] >= 30 and train["finite"] and train["falling"]
    assert max(train["fp32_vs_cpu_rel"]) <= train["fp32_tol"] < max(train["bf16_vs_cpu_rel"])   # + control
    gemm = checks["grouped_gemm"]["numbers"]["results"]
    assert gemm["bfloat16"]["passed"] and gemm["float32"]["passed"]
    assert gemm["float32"]["control_wrong_offsets_rel"] > gemm["float32"]["max_rel"]
    attention = checks["attention"]["numbers"]
    assert attention["causal"]["used"] != "unknown" and attention["doc_mask"]["mask"] is not None
    memory = checks["memory"]["numbers"]
    assert all(abs(s["held_ratio"] - 1) <= memory["held_tol"] for s in memory["stages"])


def test_a_raising_check_is_a_fail_row(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "CHECKS", (Check("boom", "bench.no_such_check_module", "raises", 5, 5, True),))
    out = tmp_path / "boom.json"
    assert child_main("boom", str(out), str(tmp_path / "w"), smoke=True) == 0
    res = json.loads(out.read_text())
    assert res["status"] == "FAIL" and "ModuleNotFoundError" in res["summary"] and res["numbers"]["traceback"]


def test_no_gpu_without_smoke_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--cpu-smoke" in proc.stderr
