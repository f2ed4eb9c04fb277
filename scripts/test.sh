#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetch the real checkpoints and data the integration
# tests use, then build and run every test of the workspace in release mode (the training
# tests are too slow unoptimised). CI (.ci/run) calls exactly this.
#
# The suite is built with the kernels' optional oneDNN bridge (`onednn`: bf16 products on
# AMX, against Debian's libdnnl-dev, which this script installs when missing): its own tests
# run everywhere, and on an AMX machine every bf16 test goes through oneDNN. Elsewhere the
# bridge stands aside, as in a build without the feature.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-assets.sh
./scripts/install-onednn.sh
cargo test --release --workspace --features alpaca-kernels/onednn "$@"
