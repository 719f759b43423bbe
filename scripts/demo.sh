#!/usr/bin/env bash
# The main job on the embedded default: Shakespeare -> sentencepiece tokenizer -> checksummed token shards
# (scripts/prepare_demo_data.sh) -> a small OLMoE + Over-Tokenized model trained on CPU.
# Idempotent: data prep skips complete work; training resumes from the latest checkpoint, and a finished
# run re-prints its result.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
RUN=runs/demo

echo "== [1/2] preparing the embedded corpus (data/demo)"
bash scripts/prepare_demo_data.sh
echo "== [2/2] training the demo model (configs/run/demo.yaml) into $RUN"
.venv/bin/python launch/train.py --config configs/run/demo.yaml data.path=data/demo/shards run_dir="$RUN" \
  train.resume=auto
echo
echo "Watch it:   .venv/bin/tensorboard --logdir $RUN/tensorboard   then open http://localhost:6006/#custom_scalars"
