"""Run a Python function on N gloo ranks (CPU) with a hard timeout, so a failing test never hangs.

Usage in a test:
    results = run_ranks(world_size=2, target="tests.pipeline.test_x:worker", args={"seed": 0})
`target` is "module:function"; the function is called as fn(rank, world_size, **args) in a fresh process
with torch.distributed already initialised (gloo, TCP on 127.0.0.1), and must return something
JSON-serialisable (or None). Returns the list of per-rank results, in rank order. Any rank failing, or the
timeout expiring, kills every rank and raises with the failing rank's stderr tail.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_BOOT = r"""
import json, os, sys, importlib, datetime
import torch.distributed as dist
target, args_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=float(os.environ.get("TEST_PG_TIMEOUT", "120"))))
mod, fn = target.split(":")
with open(args_path) as f:
    args = json.load(f)
res = getattr(importlib.import_module(mod), fn)(rank, world, **args)
with open(out_path, "w") as f:
    json.dump(res, f)
dist.barrier()
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
    })
    env.update(extra or {})
    return env


def run_ranks(world_size: int, target: str, args: dict | None = None, timeout: float = 300,
              env: dict | None = None) -> list:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args_path = Path(tmp) / "args.json"
        args_path.write_text(json.dumps(args or {}))
        procs, outs, errs = [], [], []
        for r in range(world_size):
            out = Path(tmp) / f"out{r}.json"
            err = open(Path(tmp) / f"err{r}.txt", "w+")
            outs.append(out)
            errs.append(err)
            # `python -c` in cwd=REPO puts the repo first on sys.path: the target lives in tests/, which is
            # not part of the installed package (the product code is, so no PYTHONPATH is needed).
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _BOOT, target, str(args_path), str(out)],
                env=rank_env(r, world_size, port, env), cwd=REPO, stdout=err, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        failed = None
        while True:
            codes = [p.poll() for p in procs]
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = (bad[0], f"exit code {codes[bad[0]]}")
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                failed = (next(r for r, c in enumerate(codes) if c is None), f"timeout after {timeout}s")
                break
            time.sleep(0.05)
        if failed is not None:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
            r, why = failed
            errs[r].seek(0)
            tail = errs[r].read()[-4000:]
            raise RuntimeError(f"rank {r} failed ({why}):\n{tail}")
        results = [json.loads(o.read_text()) for o in outs]
        for e in errs:
            e.close()
        return results
