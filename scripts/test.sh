#!/usr/bin/env bash
# Every test of the project, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks and the whole test suite (unit, reference-vector, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/setup-model.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
