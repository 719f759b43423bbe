"""The cluster launchers of launch/, run on this machine (loopback only: MPI on `lo`, rendezvous on 127.0.0.1).

- launch/mpirun.sh: 2 ranks through Open MPI (rank discovery from OMPI_COMM_WORLD_*, pipeline/train/
  distributed.py) train the tiny run with row-sharded OE as ONE job (the saved OE table has 2 shards) and give
  the losses of one plain process within 1e-5. Skipped only when mpirun is not installed.
- launch/slurm.sbatch (SLURM is not installable here): the script parses (`bash -n`), and run with faked SLURM_*
  variables, a fake `scontrol` and a fake `srun` that starts its command once per "node" (as srun does with
  --ntasks-per-node=1), srun gets the torchrun command line (nodes, ranks per node, rendezvous on the first
  host of the node list, job id) and the torchruns rendezvous into one job: every rank sees its own RANK, the
  node's LOCAL_RANK and GROUP_RANK, WORLD_SIZE = nodes x ranks per node and one MASTER_ADDR. The training
  script is a stand-in that records them (the rank mapping is the script's job; training under torchrun is
  tested elsewhere).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.parallel.sharded_checkpoint import read_meta
from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.train.runs import TINY_RUN, launch, make_shards, step_losses

STEPS = 4
QUIET = ["eval.every=0", "eval.at_end=false", "log.tensorboard=false", f"train.max_steps={STEPS}",
         "checkpoint.every=0", "checkpoint.save_at_end=false"]
LOOPBACK = "--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"


def _clean_env(**extra: str) -> dict:
    env = rank_env(0, 1, free_port())
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)   # the launcher under test must provide them
    env.update(extra)
    return env


@pytest.mark.multirank
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_mpirun_two_ranks_match_one_process(tmp_path):
    shards = make_shards(tmp_path / "shards")
    args = ["--config", str(TINY_RUN), f"data.path={shards}", *QUIET]
    env = _clean_env(NP="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHON=sys.executable,
                     MPI_ARGS=LOOPBACK)
    proc = subprocess.run(["bash", str(REPO / "launch" / "mpirun.sh"), *args, f"run_dir={tmp_path}/mpi",
                           "checkpoint.save_at_end=true"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"mpirun.sh exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    launch([*args, f"run_dir={tmp_path}/one"], launcher="python", timeout=120)
    mpi, one = step_losses(tmp_path / "mpi"), step_losses(tmp_path / "one")
    assert sorted(mpi) == list(range(1, STEPS + 1)) and sorted(one) == sorted(mpi)
    # one job of 2 ranks, not 2 one-process runs (which would also match): the OE table was split over 2 ranks
    meta = read_meta(tmp_path / "mpi" / "checkpoints" / f"step_{STEPS}" / "external" / "over_encoding.table")
    assert meta["world_size"] == 2 and len(meta["shards"]) == 2, meta
    for s in one:   # DP2 with the OE table row-sharded over both ranks = one process on the same global batch
        assert abs(mpi[s] - one[s]) <= 1e-5 * abs(one[s]), ("mpirun.sh DP2 vs one process", s, mpi[s], one[s])


RECORD_ENV = """import importlib.util, json, os, sys
if sys.argv[1:2] == ["--print-run-dir"]:   # the script asks where run_dir is (to look for run_dir/PREEMPTED)
    print(os.path.join(os.environ["RECORD_DIR"], "run"))
    sys.exit(0)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "OMP_NUM_THREADS")
out = os.path.join(os.environ["RECORD_DIR"], "rank%s.json" % os.environ["RANK"])
json.dump({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:],
           "pipeline": importlib.util.find_spec("pipeline").origin}, open(out, "w"))
"""
# srun with --ntasks-per-node=1 starts the command once per node; here every "node" is this machine.
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD_DIR/srun_args"
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" & pids+=($!)
done
status=0; for p in "${pids[@]}"; do wait "$p" || status=1; done; exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames $SLURM_JOB_NODELIST" ]] || { echo "unexpected: $*" >&2; exit 1; }
printf '127.0.0.1\\n127.0.0.1\\n'
"""


def test_slurm_sbatch_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "launch" / "slurm.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.multirank
def test_slurm_sbatch_maps_ranks_across_nodes(tmp_path):
    """2 faked nodes x 2 ranks each: one rendezvous of 4 ranks, each with its own RANK and the node's LOCAL_RANK."""
    submit, bin_dir, record = tmp_path / "submit", tmp_path / "bin", tmp_path / "record"
    (submit / "launch").mkdir(parents=True)
    (submit / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    record.mkdir()
    (submit / "launch" / "train.py").write_text(RECORD_ENV)
    (submit / ".venv" / "bin" / "torchrun").symlink_to(Path(sys.executable).parent / "torchrun")
    (submit / ".venv" / "bin" / "python").symlink_to(sys.executable)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    port = free_port()
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="node[1-2]",
                     SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(submit),
                     GPUS_PER_NODE="2", MASTER_PORT=str(port), RECORD_DIR=str(record))
    env.pop("OMP_NUM_THREADS")   # so that the value the script exports (its default, 8) is the one ranks see
    proc = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), "--config", "x.yaml", "a.b=1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"slurm.sbatch exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    srun = (record / "srun_args").read_text().splitlines()
    assert srun[0] == "--kill-on-bad-exit=1" and srun[1] == str(submit / ".venv" / "bin" / "torchrun"), srun
    for arg in ("--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=4242"):   # rendezvous on the FIRST host of the node list, one id per job
        assert arg in srun, (arg, srun)
    ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in record.glob("rank*.json")}
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, seen in ranks.items():
        env = seen["env"]
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2", env
        # torchrun hands its workers the rendezvous host's own name (here this machine's) as MASTER_ADDR
        assert env["MASTER_ADDR"] == ranks[0]["env"]["MASTER_ADDR"] and env["OMP_NUM_THREADS"] == "8", env
        # no PYTHONPATH: the ranks (the venv's torchrun) find the code through the venv's editable install
        assert seen["pipeline"] == str(REPO / "pipeline" / "__init__.py"), seen
        assert int(env["LOCAL_RANK"]) == rank % 2 and int(env["GROUP_RANK"]) == rank // 2, env
        assert seen["argv"] == ["--config", "x.yaml", "a.b=1"]
