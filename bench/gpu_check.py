"""GPU readiness battery: one command that proves the GPU path the moment a GPU is lent (issue 13).

    python bench/gpu_check.py [--json runs/bench/gpu_check.json] [--only train,grouped_gemm,...]
    python bench/gpu_check.py --cpu-smoke [--json PATH]     # CI / no GPU: gloo, tiny shapes

Checks (each in its own subprocess with its own time budget, so a hang, an out-of-memory or a CUDA error in
one cannot stop or poison the others; the whole battery stays under 8 minutes on one GPU):
  train         nccl training of a small OLMoE + OE + MTP model through the real trainer in bf16 for >= 30
                steps (finite, falling losses), and fp32 on the device vs fp32 on the CPU for the first steps
                (bench/gpu_check_training.py)
  grouped_gemm  F.grouped_mm expert path == per-expert loop, forward and gradients, bf16 and fp32
                (bench/gpu_check_grouped_gemm.py)
  attention     which SDPA backend runs (flash / memory-efficient / cuDNN / math), causal and with document
                masks (bench/gpu_check_attention.py)
  p5            tokens/s and MFU of the OLMoE-1.3B shape with and without an OE table at the paper's
                table/active ratio, OE on/off step-time ratio (bench/gpu_check_throughput.py ->
                bench/gpu_throughput.py)
  memory        measured memory of a trainer run vs pipeline/model/memory.py (what launch/inspect_model.py
                prints) for that layout (bench/gpu_check_memory.py)
  ep2           with 2+ GPUs: 2 ranks ZeRO-2 + ep=2 + sharded OE on nccl vs one process (bench/gpu_check_ep.py)
Prints a PASS / FAIL / SKIP table with the measured numbers and one `JSON {...}` line (also --json PATH).
--cpu-smoke runs what a CPU can (train, grouped_gemm, attention and memory on gloo with tiny shapes) and
reports the CUDA-only checks as SKIP; tests/bench/test_gpu_check.py runs it. Exit status 1 if a check failed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 470          # the "under 8 minutes", with 10 s for start-up and the table
STATUSES = ("PASS", "FAIL", "SKIP")


@dataclass(frozen=True)
class Check:
    name: str
    module: str               # bench module with run(device, smoke, workdir) -> dict
    title: str
    budget_s: int             # on the GPU
    smoke_budget_s: int       # --cpu-smoke
    cpu_ok: bool              # runs (on tiny shapes) in --cpu-smoke
    min_gpus: int = 1


CHECKS = (
    # smoke budgets are caps with room for a shared, loaded 2-core CI machine (idle: 5-20 s each)
    Check("train", "bench.gpu_check_training", "trainer: bf16 >= 30 steps, fp32 GPU == CPU", 110, 150, True),
    Check("grouped_gemm", "bench.gpu_check_grouped_gemm", "grouped GEMM == loop (fwd, grads)", 40, 60, True),
    Check("attention", "bench.gpu_check_attention", "SDPA backend, causal / document mask", 40, 60, True),
    Check("p5", "bench.gpu_check_throughput", "P5 OLMoE-1.3B tokens/s, MFU, OE on/off", 150, 0, False),
    Check("memory", "bench.gpu_check_memory", "measured memory vs inspect prediction", 80, 120, True),
    Check("ep2", "bench.gpu_check_ep", "2 ranks ep=2 + sharded OE == 1 process (nccl)", 90, 0, False, 2),
)


def result(status: str, summary: str, **numbers) -> dict:
    """What a check's run() returns: PASS/FAIL/SKIP, a one-line summary for the table, the measured numbers."""
    assert status in STATUSES, status
    return {"status": status, "summary": summary, "numbers": numbers}


def child_env(smoke: bool) -> dict:
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)            # every check starts its own process group
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if smoke:
        # One intra-op thread: on a shared 2-core machine multi-threaded tiny ops are 10-30x slower (measured).
        env.update({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    return env


def run_child(check: Check, smoke: bool, budget: float, workdir: Path) -> dict:
    out = workdir / f"{check.name}.json"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--child", check.name, "--child-out", str(out),
           "--workdir", str(workdir / check.name)] + (["--cpu-smoke"] if smoke else [])
    log = workdir / f"{check.name}.log"
    with open(log, "w") as f:
        # own session: on a timeout the whole group (torchrun and its ranks included) is killed
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(smoke), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return result("FAIL", f"timed out after {budget:.0f} s (budget)", log=str(log))
    if out.is_file():
        res = json.loads(out.read_text())
        res["numbers"]["log"] = str(log)
        return res
    tail = log.read_text()[-1500:] if log.is_file() else ""
    return result("FAIL", f"exited {proc.returncode} without a result", log=str(log), log_tail=tail)


def child_main(name: str, out: str, workdir: str, smoke: bool) -> int:
    check = next(c for c in CHECKS if c.name == name)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    device = "cpu" if smoke else "cuda"
    try:
        res = importlib.import_module(check.module).run(device, smoke, Path(workdir))
    except Exception as e:  # a check's own failure is its result, not the battery's
        res = result("FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                     traceback=traceback.format_exc()[-3000:])
    Path(out).write_text(json.dumps(res))
    return 0


def device_info(smoke: bool) -> dict:
    import torch
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": 0, "device": "cpu"}
    if not smoke and torch.cuda.is_available():
        info.update(gpus=torch.cuda.device_count(), device=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return info


def print_table(record: dict) -> None:
    print(f"GPU readiness battery ({record['mode']}): {record['info']['device']}, torch {record['info']['torch']}, "
          f"{record['info']['gpus']} GPU(s), {record['total_s']:.0f} s")
    print(f"{'check':<14}{'status':<8}{'s':>6}  summary")
    for c in record["checks"]:
        print(f"{c['name']:<14}{c['status']:<8}{c['seconds']:>6.1f}  {c['summary']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: gloo, tiny shapes, CUDA checks SKIP")
    ap.add_argument("--only", default=None, help="comma-separated check names (default: all)")
    ap.add_argument("--json", default=None, help="also write the JSON record here")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--jobs", type=int, default=None, help="checks run at once (default 1; --cpu-smoke: 2)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child, args.child_out, args.workdir, args.cpu_smoke)
    info = device_info(args.cpu_smoke)
    if not args.cpu_smoke and info["gpus"] == 0:
        print("error: no CUDA GPU is visible; run with --cpu-smoke for the CPU smoke mode", file=sys.stderr)
        return 2
    wanted = set(args.only.split(",")) if args.only else {c.name for c in CHECKS}
    unknown = wanted - {c.name for c in CHECKS}
    if unknown:
        print(f"error: --only: unknown check(s) {sorted(unknown)} (known: {[c.name for c in CHECKS]})",
              file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def one(check: Check) -> dict:
        t0 = time.monotonic()
        left = TOTAL_BUDGET_S - (t0 - start)
        budget = min(check.smoke_budget_s if args.cpu_smoke else check.budget_s, left)
        if check.name not in wanted:
            res = result("SKIP", "not selected (--only)")
        elif args.cpu_smoke and not check.cpu_ok:
            res = result("SKIP", "needs CUDA (--cpu-smoke)")
        elif not args.cpu_smoke and info["gpus"] < check.min_gpus:
            res = result("SKIP", f"needs {check.min_gpus} GPUs, {info['gpus']} visible")
        elif budget < 10:
            res = result("SKIP", f"no time left in the {TOTAL_BUDGET_S} s battery budget")
        else:
            res = run_child(check, args.cpu_smoke, budget, workdir)
        res.update(name=check.name, title=check.title, budget_s=budget, seconds=time.monotonic() - t0)
        return res

    # On the GPU the checks run one after the other (one device; the memory check measures the allocator).
    # The CPU smoke mode runs two at a time: most of each check is python start-up and imports.
    jobs = args.jobs or (2 if args.cpu_smoke else 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        checks = list(pool.map(one, CHECKS))
    record = {"bench": "gpu_check", "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "info": info,
              "workdir": str(workdir), "total_s": time.monotonic() - start, "checks": checks,
              "passed": all(c["status"] != "FAIL" for c in checks)}
    print_table(record)
    line = json.dumps(record, sort_keys=True)
    print("JSON " + line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(line + "\n")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
