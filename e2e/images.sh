#!/usr/bin/env bash
# Builds the container images the e2e cluster runs — rag-node (with the default model baked
# in), rag-operator and Redis — without a registry: each is a root file system (the binary,
# the shared libraries ldd lists, CA certificates, passwd entries for the non-root users)
# brought into docker with `docker import`. Tags are content hashes, so an unchanged image is
# not imported again. Writes NAME=TAG lines to $STATE/images.env.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${RAG_E2E_CACHE:-$HOME/.cache/rag-node}
STATE=$CACHE/e2e-cluster
MODEL=${RAGNODE_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rag-node/models/all-MiniLM-L6-v2}
mkdir -p "$STATE"
out=$STATE/images.env.tmp
: >"$out"

# rootfs DIR BINARY DEST: the binary and every library it loads, at their own paths.
add_binary() {
  local dir=$1 bin=$2 dest=$3
  mkdir -p "$dir$(dirname "$dest")"
  cp "$(readlink -f "$bin")" "$dir$dest"
  ldd "$bin" | awk '/=>/ {print $3} /^[ \t]*\// {print $1}' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}

base_files() {
  local dir=$1
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/data"
  chmod 1777 "$dir/tmp"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/" 2>/dev/null || true
  printf 'root:x:0:0:root:/root:/bin/false\nrag:x:10001:10001:rag:/data:/bin/false\nredis:x:999:999:redis:/data:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nrag:x:10001:\nredis:x:999:\nnogroup:x:65534:\n' >"$dir/etc/group"
}

# import NAME DIR CHANGES...: imports DIR as NAME:<content hash>.
import() {
  local name=$1 dir=$2; shift 2
  local tar=$dir.tar
  # Deterministic tar (sorted, fixed times and owners) so the hash only follows the content.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$tar" .
  local tag
  tag=$( { sha256sum "$tar"; printf '%s\n' "$@"; } | sha256sum | cut -c1-12)
  if ! docker image inspect "$name:$tag" >/dev/null 2>&1; then
    local args=()
    for c in "$@"; do args+=(--change "$c"); done
    docker import "${args[@]}" "$tar" "$name:$tag" >/dev/null
  fi
  echo "$name:$tag"
}

cd "$root"
cargo build --release -p rag-node -p rag-operator
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

d=$work/rag-node
base_files "$d"
add_binary "$d" target/release/rag-node /usr/local/bin/rag-node
mkdir -p "$d/opt/rag-node/model"
cp "$MODEL"/config.json "$MODEL"/tokenizer.json "$MODEL"/model.safetensors "$d/opt/rag-node/model/"
[ -d "$MODEL/1_Pooling" ] && cp -r "$MODEL/1_Pooling" "$d/opt/rag-node/model/"
echo "NODE_IMAGE=$(import rag-node "$d" 'ENTRYPOINT ["/usr/local/bin/rag-node"]' \
  'ENV RAGNODE_MODEL_DIR=/opt/rag-node/model' 'USER 10001' 'WORKDIR /data')" >>"$out"

d=$work/rag-operator
base_files "$d"
add_binary "$d" target/release/rag-operator /usr/local/bin/rag-operator
echo "OPERATOR_IMAGE=$(import rag-operator "$d" 'ENTRYPOINT ["/usr/local/bin/rag-operator"]' 'USER 65534')" >>"$out"

d=$work/redis
base_files "$d"
add_binary "$d" /usr/bin/redis-server /usr/bin/redis-server
echo "REDIS_IMAGE=$(import rag-redis "$d" 'ENTRYPOINT ["/usr/bin/redis-server"]' 'USER 999' 'WORKDIR /data')" >>"$out"

mv "$out" "$STATE/images.env"
cat "$STATE/images.env"
