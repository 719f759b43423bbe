"""launch/slurm.sbatch's end (SLURM is not installable here: `srun` and `scontrol` are fakes on PATH that record
their arguments; the fake srun exits with a chosen code and may leave run_dir/PREEMPTED as a stopped run does):

- the job step exits 75 (a stop with a checkpoint: preempted, time limit) -> `scontrol requeue <job id>`, exit 75;
- it exits non-zero and left a NEW run_dir/PREEMPTED (torchrun exits 1 whatever its ranks' exit code) -> the
  same requeue; an older PREEMPTED that the step did not rewrite (it failed before it started training) -> not;
- it exits 0 -> no requeue, exit 0; it exits 1 -> no requeue, exit 1 (`set -e` does not end the script first);
- srun's torchrun gets --max-restarts (default 3, MAX_RESTARTS overrides), and the script asks the real
  launch/train.py --print-run-dir where run_dir is.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.multirank import REPO

JOB_ID = "4242"
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD_DIR/srun_args"
if [[ -n "${FAKE_WRITE_MARKER:-}" ]]; then
  mkdir -p "$FAKE_RUN_DIR" && echo '{"step": 3, "reason": "SIGTERM"}' > "$FAKE_RUN_DIR/PREEMPTED"
fi
exit "$FAKE_EXIT"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$RECORD_DIR/scontrol"
[[ "$1 $2" == "show hostnames" ]] && printf 'node1\\nnode2\\n'
exit 0
"""
# launch/train.py of the fake submit dir: only asked for run_dir (the fake srun runs nothing)
PRINT_RUN_DIR = """import os, sys
assert sys.argv[1] == "--print-run-dir", sys.argv
print(os.environ["FAKE_RUN_DIR"])
"""


def sbatch(tmp_path, exit_code: int, write_marker: bool = False, old_marker: bool = False, **env_extra):
    submit, bin_dir, record, run_dir = (tmp_path / n for n in ("submit", "bin", "record", "run"))
    for d in (submit / "launch", submit / ".venv" / "bin", bin_dir, record):
        d.mkdir(parents=True)
    (submit / "launch" / "train.py").write_text(PRINT_RUN_DIR)
    (submit / ".venv" / "bin" / "python").symlink_to(sys.executable)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    if old_marker:   # left by an earlier, preempted run of this run_dir
        run_dir.mkdir()
        (run_dir / "PREEMPTED").write_text('{"step": 2, "reason": "SIGTERM"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MAX_RESTARTS"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_ID=JOB_ID, SLURM_SUBMIT_DIR=str(submit), RECORD_DIR=str(record), FAKE_RUN_DIR=str(run_dir),
               FAKE_EXIT=str(exit_code), FAKE_WRITE_MARKER="1" if write_marker else "", **env_extra)
    proc = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), "--config", "x.yaml", "a.b=1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    scontrol = (record / "scontrol").read_text().splitlines() if (record / "scontrol").exists() else []
    srun = (record / "srun_args").read_text().splitlines() if (record / "srun_args").exists() else None
    return proc, [c for c in scontrol if not c.startswith("show hostnames")], srun


@pytest.mark.parametrize("exit_code,write_marker,old_marker,requeued,expected_exit", [
    (75, False, False, True, 75),    # the step itself says: stopped with a checkpoint
    (1, True, False, True, 75),      # torchrun's 1 over ranks that exited 75: a new PREEMPTED
    (1, True, True, True, 75),       # ... rewriting the one an earlier stop left
    (1, False, True, False, 1),      # failed before training: the earlier PREEMPTED is unchanged
    (1, False, False, False, 1),     # a plain failure
    (0, False, False, False, 0),     # finished
])
def test_the_script_requeues_a_stopped_run_and_passes_any_other_exit_on(tmp_path, exit_code, write_marker,
                                                                        old_marker, requeued, expected_exit):
    proc, scontrol, srun = sbatch(tmp_path, exit_code, write_marker, old_marker)
    assert proc.returncode == expected_exit, proc.stderr
    assert scontrol == ([f"requeue {JOB_ID}"] if requeued else []), (scontrol, proc.stderr)
    assert ("requeueing" in proc.stderr) == requeued, proc.stderr
    assert "--max-restarts=3" in srun and srun[-3:] == ["--config", "x.yaml", "a.b=1"], srun


def test_max_restarts_can_be_set(tmp_path):
    proc, _, srun = sbatch(tmp_path, 0, MAX_RESTARTS="7")
    assert proc.returncode == 0 and "--max-restarts=7" in srun, (proc.stderr, srun)


def test_train_py_prints_the_run_dir_of_its_config_and_overrides(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config",
                           str(REPO / "configs" / "run" / "tiny-cpu.yaml"), f"data.path={tmp_path}",
                           f"run_dir={tmp_path}/run", "--print-run-dir"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{tmp_path}/run", proc.stderr
    assert not (tmp_path / "run").exists()   # nothing is created: only the config was read
