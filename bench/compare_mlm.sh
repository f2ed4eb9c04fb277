#!/usr/bin/env bash
# MLM pre-training of the same small BERT from scratch, alpaca vs transformers (bench/hf_mlm.py):
# same WordPiece tokenizer (trained here by alpaca), same blocks, same held-out files, same
# hyper-parameters, fp32 on the same threads. Prints alpaca's report and the peer's JSON line;
# the latter also scores alpaca's best checkpoint on the peer's held-out masks ("compared"),
# so that both models are measured on the same targets.
#
#   bench/compare_mlm.sh [STEPS] [SEED]   (defaults 300, 42; run on an idle machine)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-300}"
seed="${2:-42}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
python="${PYTHON:-$HOME/.cache/alpaca/venv/bin/python}"
work="${WORK:-/tmp/alpaca-mlm-bench}"
mkdir -p "$work"
./scripts/fetch-assets.sh >/dev/null
cargo build --release -q -p alpaca-cli

# Held out: the first five Moby Dick chapters and the 2017–2021 addresses.
moby="$assets/moby-dick/package/data"
sotu="$assets/sotu/package/data"
dev=("$moby"/chapter_{1,2,3,4,5}.json "$sotu"/20{17,18,19,20,21}_*.txt)
train=()
for file in "$moby"/chapter_*.json "$sotu"/*.txt; do
  case " ${dev[*]} " in *" $file "*) ;; *) train+=("$file") ;; esac
done
echo "train files: ${#train[@]}, held-out files: ${#dev[@]}" >&2

./target/release/alpaca tokenizer train --kind wordpiece --vocab-size 16000 --overwrite \
  --output "$work/tokenizer" "${train[@]}" >&2

common=(--max-len 128 --batch-size 32 --lr 5e-4 --warmup-ratio 0.1 --weight-decay 0.01 --seed "$seed")
./target/release/alpaca train mlm --config examples/bert-small.toml --tokenizer "$work/tokenizer" \
  --corpus "${train[@]}" --dev "${dev[@]}" --output "$work/alpaca" --overwrite \
  --max-steps "$steps" --threads 2 --log-every 50 "${common[@]}"

"$python" bench/hf_mlm.py --tokenizer "$work/tokenizer" --corpus "${train[@]}" --dev "${dev[@]}" \
  --hidden 256 --layers 4 --heads 4 --ffn 1024 --max-steps "$steps" --threads 2 \
  --output "$work/hf" --compare "$work/alpaca/best" "${common[@]}" 2>/dev/null | tail -n 1
