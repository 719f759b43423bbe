#!/usr/bin/env bash
# Run every experiment for real, seed-0 comparisons first (runs are cached, so a rerun resumes), then write
# docs/results.md. ~3 h on 2 idle CPU cores. Usage: bash experiments/run_all.sh [logdir]
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:-runs/experiments/logs}
mkdir -p "$log"
export DS_ACCELERATOR=cpu OMP_WAIT_POLICY=PASSIVE
for exp in hierarchy collision oe_vs_baseline table_size cfg_experiment; do
  .venv/bin/python -m experiments.$exp > "$log/$exp.log" 2>&1
done
.venv/bin/python -m experiments.investigate --extra-seeds > "$log/investigate.log" 2>&1
.venv/bin/python -m experiments.report
