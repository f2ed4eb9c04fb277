#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetch the real checkpoints and data the integration
# tests use, then build and run every test of the workspace in release mode (the training
# tests are too slow unoptimised). CI (.ci/run) calls exactly this.
#
# The kernels' optional oneDNN bridge (`--features onednn`, bf16 products on AMX) is built
# and tested too, against Debian's libdnnl-dev, which this script installs when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-assets.sh
./scripts/install-onednn.sh
cargo test --release --workspace "$@"
cargo test --release -p alpaca-kernels --features onednn --lib onednn
