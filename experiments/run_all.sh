#!/usr/bin/env bash
# Run every experiment for real (runs are cached, so a rerun resumes), then write docs/results.md. Experiments
# 1-5 train two runs at a time (--jobs 2, one core each); each states its wall time in docs/results.md (at most
# 45 min from an empty cache); about 2.5 h on 2 idle CPU cores in all.
# Usage: bash experiments/run_all.sh [logdir]
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:-runs/experiments/logs}
mkdir -p "$log"
export DS_ACCELERATOR=cpu OMP_WAIT_POLICY=PASSIVE
bash scripts/prepare_demo_data.sh > "$log/prepare_demo_data.log" 2>&1     # the investigation's earlier scale
bash experiments/prepare_data.sh > "$log/prepare_data.log" 2>&1           # experiments 1-4
.venv/bin/python -m experiments.design > "$log/design.log" 2>&1
for exp in oe_vs_baseline hierarchy collision table_size; do
  .venv/bin/python -m experiments.$exp --jobs 2 > "$log/$exp.log" 2>&1
done
.venv/bin/python -m experiments.cfg_experiment --jobs 2 > "$log/cfg_experiment.log" 2>&1
.venv/bin/python -m experiments.investigate --extra-seeds --jobs 2 > "$log/investigate.log" 2>&1
.venv/bin/python -m experiments.report
