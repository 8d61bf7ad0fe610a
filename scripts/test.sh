#!/usr/bin/env bash
# Every test of the project, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks and the whole test suite (unit, reference-vector, end-to-end), and
# the e2e suite on a real Kubernetes cluster it brings up itself (e2e/run.sh).
set -euo pipefail
# pipefail: a failing cargo test fails the script even through tee.
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/setup-model.sh
scripts/setup-moto.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --all-targets --exclude rag-e2e 2>&1 | tee "$log"
# The operator and the nodes on a real Kubernetes (built from Debian's source, cached).
e2e/run.sh 2>&1 | tee -a "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
