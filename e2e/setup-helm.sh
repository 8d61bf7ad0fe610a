#!/usr/bin/env bash
# Installs Helm (the Go SDK, through PyPI `helm-python-sdk`; there is no helm binary here) into
# its own virtualenv under ~/.cache/rag-node/venv-helm. Idempotent.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rag-node"
venv="$cache/venv-helm"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import helm_python' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "helm-python-sdk==0.2.2" "pyyaml>=6"
echo "helm-python-sdk installed in $venv"
