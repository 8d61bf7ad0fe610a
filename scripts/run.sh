#!/usr/bin/env bash
# Runs a standalone rag-node (embedded queue, no Redis, no Kubernetes) on 127.0.0.1:8080 with the
# default model. Extra arguments go to `rag-node serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
exec cargo run --release -p rag-node -- serve --listen 127.0.0.1:8080 --data-dir ./rag-data "$@"
