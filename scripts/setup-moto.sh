#!/usr/bin/env bash
# Installs moto's S3-compatible server (PyPI `moto[server]`) into its own virtualenv under
# ~/.cache/rag-node/venv-moto; the snapshot tests store snapshots in it. Idempotent.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rag-node"
venv="$cache/venv-moto"
if [ -x "$venv/bin/moto_server" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "moto[server]>=5,<6"
echo "moto_server installed in $venv/bin"
