"""Process-group start-up for every way a run is launched.

- `deepspeed [--num_accelerators N] launch/train.py ...` and `torchrun ...`: RANK / WORLD_SIZE / LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT are in the environment already.
- `mpirun -np N ...`: OpenMPI's OMPI_COMM_WORLD_* variables are mapped to the torch ones (torch has no MPI
  backend; gloo/nccl rendezvous over TCP on MASTER_ADDR, default loopback).
- plain `python launch/train.py ...`: a one-process group on a free loopback port.
Backend: nccl when CUDA is available, else gloo (config `deepspeed.backend` may force one).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_with_launcher() -> None:
    """A rank started by a launcher (torchrun, deepspeed, mpirun, srun) dies with it: if the launcher is killed,
    its ranks must not keep training and writing checkpoints behind a requeued job. Linux delivers SIGTERM to
    this process when its parent exits (prctl PR_SET_PDEATHSIG); the check after the call closes the race
    with a parent that died before it."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return   # not Linux: nothing to arm
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def populate_env() -> None:
    """Make RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* present, whatever launched us; a launched rank is tied to
    its launcher's lifetime (stop_with_launcher)."""
    env = os.environ
    if "RANK" in env or "OMPI_COMM_WORLD_RANK" in env:
        stop_with_launcher()
    if "RANK" not in env and "OMPI_COMM_WORLD_RANK" in env:
        env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
        env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
    if "RANK" not in env:
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env.setdefault("LOCAL_RANK", "0")
    # DeepSpeed's CPU accelerator is picked automatically without CUDA; saying so silences its warning.
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(backend: str = "auto", timeout_s: float | None = None) -> DistInfo:
    populate_env()
    import deepspeed
    import deepspeed.ops

    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("deepspeed.backend: nccl needs CUDA, which is not available here (use gloo or auto)")
    # The shared-memory comm op is only an accelerator for CPU collectives and costs a 45-60 s JIT build on
    # every fresh machine; gloo does not need it. DeepSpeed consults this table before building it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get("TRAIN_PG_TIMEOUT", 1800)))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                    local_rank=local_rank, device=device, backend=backend)


# How torch reports a broken collective: NCCL raises DistError subclasses; gloo raises a plain RuntimeError
# naming its transport ("Connection reset by peer", "Timed out waiting ... for send operation").
_COLLECTIVE_FAILURE_MARKERS = ("gloo/transport", "gloo::", "ProcessGroupGloo", "ProcessGroupNCCL", "NCCL error",
                               "Connection reset by peer", "Connection closed by peer")


def is_collective_failure(error: BaseException) -> bool:
    """A collective failed because a peer died, hangs or the network broke (not a bug in this rank)."""
    if isinstance(error, torch.distributed.DistError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _COLLECTIVE_FAILURE_MARKERS)
