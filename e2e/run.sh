#!/usr/bin/env bash
# The e2e suite: a real Kubernetes (the one in $KUBECONFIG if set, otherwise the local cluster
# of docs/e2e-cluster.md, brought up and cached by e2e/cluster/up.sh), the images built
# and imported locally, Helm from PyPI, then the tests in e2e/tests/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CACHE=${RAG_E2E_CACHE:-$HOME/.cache/rag-node}
if [ -z "${KUBECONFIG:-}" ]; then
  # A cluster this run starts is stopped again at its end (RAG_E2E_KEEP_CLUSTER=1 keeps it),
  # so no process outlives the test command.
  if ! [ -f "$CACHE/e2e-cluster/kube-apiserver.pid" ] || ! kill -0 "$(cat "$CACHE/e2e-cluster/kube-apiserver.pid")" 2>/dev/null; then
    [ "${RAG_E2E_KEEP_CLUSTER:-0}" = 1 ] || trap 'e2e/cluster/down.sh' EXIT
  fi
  KUBECONFIG=$(e2e/cluster/up.sh | tail -n1)
  export KUBECONFIG
fi
e2e/setup-helm.sh
# moto's S3 server, the backup target of the e2e cluster.
scripts/setup-moto.sh >/dev/null
e2e/images.sh >/dev/null
set -a
# shellcheck disable=SC1091
. "$CACHE/e2e-cluster/images.env"
set +a
cargo test --release -p rag-e2e -- --nocapture --test-threads=1
