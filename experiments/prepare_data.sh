#!/usr/bin/env bash
# Data of experiments 1-4: the embedded Shakespeare corpus -> a 1,024-token sentencepiece BPE tokenizer ->
# checksummed shards in data/exp_v1024/ (2 % validation, split by document hash). Idempotent. The
# investigation at the earlier scale reads data/demo (8,192 tokens; scripts/prepare_demo_data.sh alone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare_demo_data.sh data/exp_v1024 1024
