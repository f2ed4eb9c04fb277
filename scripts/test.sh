#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetch the real checkpoints and data the integration
# tests use, then build and run every test of the workspace in release mode (the training
# tests are too slow unoptimised). CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-assets.sh
cargo test --release --workspace "$@"
