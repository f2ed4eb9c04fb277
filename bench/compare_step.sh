#!/usr/bin/env bash
# Runs the reference training step with alpaca and PyTorch alternately (3 rounds each, so
# machine noise hits both) and prints the alpaca/PyTorch ratio of median seconds per step.
#   bench/compare_step.sh [threads] [precision]
# ALPACA_FEATURES=onednn builds alpaca with oneDNN's bf16 products (AMX CPUs).
# ALPACA_BEFORE=<binary> also runs that alpaca build in each round (printed, not in the ratio).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
precision="${2:-fp32}"
python="${ALPACA_VENV:-$HOME/.cache/alpaca/venv}/bin/python"
cargo build --release -q -p alpaca-cli ${ALPACA_FEATURES:+--features "$ALPACA_FEATURES"}
ours=()
theirs=()
for round in 1 2 3; do
  if [ -n "${ALPACA_BEFORE:-}" ]; then
    echo "round $round: before $("$ALPACA_BEFORE" bench step --threads "$threads" --precision "$precision" 2>/dev/null | tail -n 1 | cut -d= -f2) s/step"
  fi
  ours+=("$(./target/release/alpaca bench step --threads "$threads" --precision "$precision" 2>/dev/null | tail -n 1 | cut -d= -f2)")
  theirs+=("$("$python" bench/torch_step.py --threads "$threads" --precision "$precision" | tail -n 1 | cut -d= -f2)")
  echo "round $round: alpaca ${ours[-1]} s/step, pytorch ${theirs[-1]} s/step"
done
python3 - "${ours[@]}" "${theirs[@]}" <<'PY'
import statistics, sys
values = [float(v) for v in sys.argv[1:]]
half = len(values) // 2
ours, theirs = statistics.median(values[:half]), statistics.median(values[half:])
print(f"median alpaca {ours:.4f} s/step, pytorch {theirs:.4f} s/step, ratio alpaca/pytorch {ours / theirs:.3f}")
PY
