"""Process-group start-up for every way a run is launched.

- `deepspeed [--num_accelerators N] launch/train.py ...` and `torchrun ...`: RANK / WORLD_SIZE / LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT are in the environment already.
- `mpirun -np N ...`: OpenMPI's OMPI_COMM_WORLD_* variables are mapped to the torch ones (torch has no MPI
  backend; gloo/nccl rendezvous over TCP on MASTER_ADDR, default loopback).
- plain `python launch/train.py ...`: a one-process group on a free loopback port.
Backend: nccl when CUDA is available, else gloo (config `deepspeed.backend` may force one).

Under torchrun the ranks would rendezvous in the launcher's own TCPStore (TORCHELASTIC_USE_AGENT_STORE), which
outlives the workers: after a restart (`--max-restarts`) the new ranks find the keys of the incarnation that
died there (the old rank 0's gloo address, NCCL's unique id) and fail to connect. So each incarnation gets a
store of its own (incarnation_store).
"""
from __future__ import annotations

import datetime
import os
import socket
import time
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


INCARNATION_KEY = "ot-train/incarnation_store"
_PROBE_S = 5.0


def incarnation_store(timeout: datetime.timedelta):
    """A TCPStore that only this incarnation of a torchrun job uses, or None when torchrun's store is not
    shared with the workers (another launcher). Rank 0 hosts it on a free port and publishes host:port in
    torchrun's store; the other ranks read that key, which may still hold the address of the previous
    incarnation's rank 0: that process is gone (torchrun stops every worker before it restarts them), so the
    connection fails and they read the key again until rank 0 of this incarnation has rewritten it. No
    restart count is needed (each agent counts its own restarts, so the counts can differ between nodes)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import TCPStore

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    host = env["MASTER_ADDR"]   # rank 0 runs on the node that hosts torchrun's store
    agent = TCPStore(host, int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    if rank == 0:
        store = TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(INCARNATION_KEY, f"{host}:{store.port}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        address = agent.get(INCARNATION_KEY).decode()
        peer_host, _, port = address.rpartition(":")
        if _listening(peer_host, int(port)):
            try:   # (the port may also have been reused by something that is not a store)
                store = TCPStore(peer_host, int(port), world, is_master=False, wait_for_workers=False,
                                 timeout=datetime.timedelta(seconds=_PROBE_S))
            except RuntimeError:   # DistNetworkError / DistStoreError
                store = None
            if store is not None:
                store.set_timeout(timeout)
                return store
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank 0's store {address} (published in torchrun's store) could not be reached "
                               f"within {timeout.total_seconds():g} s")
        time.sleep(0.2)


def _listening(host: str, port: int) -> bool:
    """Something accepts connections at host:port (a refused or timed-out connect: the address is stale)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_S):
            return True
    except OSError:
        return False


def keep_elastic_agent_from_restarting() -> None:
    """After a stop on request (exit 75: a stop signal or train.max_duration_s, every rank checkpointed): keep
    `torchrun --max-restarts` (which restarts on any non-zero exit) from starting the run again, which would
    resume and train on, past the time limit. The ranks ignore SIGTERM from now on and wait for each other
    (all are done writing); then local rank 0 sends its torchrun agent (one per node) SIGTERM, as a preemption
    would: it shuts down without a restart, the ranks still exit 75. Nothing to do without a torchrun that
    may restart."""
    import signal

    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env or int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0) <= 0:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the agent forwards its SIGTERM to us
    try:
        torch.distributed.barrier()
    except RuntimeError:
        pass   # a peer is gone: its agent restarts or ends the job anyway
    parent = os.getppid()
    if int(env.get("LOCAL_RANK") or 0) == 0 and parent > 1:
        os.kill(parent, signal.SIGTERM)


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
    store = incarnation_store(timeout)
    if store is not None:   # DeepSpeed adopts an initialised process group
        world = int(os.environ["WORLD_SIZE"])
        # as DeepSpeed's own init does: NCCL communicators bound to this rank's device (not for one rank)
        device_id = {"device_id": torch.device("cuda", local_rank)} if cuda and world > 1 else {}
        torch.distributed.init_process_group(backend, store=store, rank=int(os.environ["RANK"]), world_size=world,
                                             timeout=timeout, **device_id)
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
