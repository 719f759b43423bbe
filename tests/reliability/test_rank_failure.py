"""One rank dies (SIGKILL) or hangs (SIGSTOP) while the others are inside a collective: the others exit
with a clear one-line error within deepspeed.timeout_s, never hang. The ranks are started as independent
processes (as mpirun or a cluster scheduler does), so no launcher agent tears the survivors down."""
from __future__ import annotations

import signal
import time

import pytest

from tests.reliability.conftest import run_args
from tests.reliability.faults import error_lines, spawn_ranks

TIMEOUT_S = 15


def wait_for_exit(proc, limit: float) -> float:
    t0 = time.monotonic()
    try:
        proc.wait(timeout=limit)
    except Exception:
        proc.kill()
        proc.wait()
        raise AssertionError(f"rank 0 still running {limit:.0f} s after its peer failed: it hangs")
    return time.monotonic() - t0


@pytest.mark.multirank
@pytest.mark.parametrize("fault", ["FAULT_KILL_AT", "FAULT_STOP_AT"])
def test_peer_failure_in_a_collective_ends_the_survivor_with_a_clear_error(shards, tmp_path, fault):
    procs = spawn_ranks(run_args(shards, tmp_path / "run", f"deepspeed.timeout_s={TIMEOUT_S}"), 2,
                        {fault: "3:1", "FAULT_RANK": "1"}, logs=tmp_path)
    rank0, rank1 = procs
    try:
        # Rank 1 fails as step 3 starts; rank 0 computes step 3 and blocks in the gradient all-reduce.
        deadline = time.monotonic() + 240
        while rank1.poll() is None and not _stopped(rank1.pid):
            assert time.monotonic() < deadline, "rank 1 never reached the fault"
            time.sleep(0.05)
        waited = wait_for_exit(rank0, TIMEOUT_S + 30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    log = (tmp_path / "rank0.log").read_text()
    assert rank0.returncode == 3, log[-3000:]
    errors = error_lines(log)
    assert len(errors) == 1 and "error: rank 0: a collective failed at step 3" in errors[0], log[-3000:]
    assert f"deepspeed.timeout_s={TIMEOUT_S}" in errors[0]
    if fault == "FAULT_STOP_AT":   # alive but silent: only the timeout can end the wait
        assert waited >= TIMEOUT_S - 5


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False
