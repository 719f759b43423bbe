#!/usr/bin/env bash
# Launch training with Open MPI: rank discovery from OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}
# (pipeline/train/distributed.py maps them to RANK/WORLD_SIZE/LOCAL_RANK); torch has no MPI backend, so
# gloo/nccl rendezvous over TCP on MASTER_ADDR, which must be given explicitly for multi-node runs
# (DeepSpeed's own MPI discovery would pick the eth0 address instead of the one you mean).
#   NP=2 MASTER_ADDR=127.0.0.1 launch/mpirun.sh --config configs/run/tiny-cpu.yaml
#   NP=16 HOSTFILE=hosts MASTER_ADDR=10.0.0.1 launch/mpirun.sh --config configs/run/olmoe-1.3b-ot12.8m.yaml
set -euo pipefail
: "${NP:?set NP (number of ranks)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of rank 0, reachable from every node)}"
MASTER_PORT="${MASTER_PORT:-29500}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# The ranks find the code through the editable install of the repo in .venv (scripts/setup.sh), so PYTHON
# must be that venv's python (the default) or one with the repo installed: no PYTHONPATH is passed.
PY="${PYTHON:-$HERE/.venv/bin/python}"
extra=()
[[ -n "${HOSTFILE:-}" ]] && extra+=(--hostfile "$HOSTFILE")
(( NP > $(nproc) )) && extra+=(--oversubscribe)
exec mpirun --allow-run-as-root -np "$NP" "${extra[@]}" ${MPI_ARGS:-} \
  -x MASTER_ADDR="$MASTER_ADDR" -x MASTER_PORT="$MASTER_PORT" -x DS_ACCELERATOR \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  "$PY" "$HERE/launch/train.py" "$@"
