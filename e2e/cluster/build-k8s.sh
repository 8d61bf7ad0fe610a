#!/usr/bin/env bash
# Builds the Kubernetes 1.20.2 server binaries from Debian's `kubernetes` source package (the only
# Kubernetes this machine can get) and caches them under ~/.cache/rag-node/k8s/<version>/bin.
# Idempotent: does nothing when the cached binaries exist. See docs/e2e-cluster.md.
set -euo pipefail
VERSION=1.20.2
CACHE=${RAG_E2E_CACHE:-$HOME/.cache/rag-node}/k8s
BIN=$CACHE/$VERSION/bin
WANT=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
all_cached() { for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
all_cached && exit 0

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

# Source lines: the machine has only binary lines; add the matching deb-src entry once.
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
  $sudo_cmd tee /etc/apt/sources.list.d/rag-node-debian-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $sudo_cmd apt-get update -qq
fi
pkgs=(golang-go rsync etcd-server golang-github-modern-go-reflect2-dev dpkg-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$CACHE/src
mkdir -p "$work"
cd "$work"
src=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -1)
if [ -z "$src" ]; then
  apt-get source --download-only kubernetes >/dev/null
  dsc=$(ls kubernetes_*.dsc | head -1)
  dpkg-source --no-check -x "$dsc" >/dev/null
  src=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -1)
fi
src=$(cd "$src" && pwd)

# reflect2 v1.0.1 (vendored) crashes kube-apiserver with Go >= 1.18: use Debian's v1.0.2.
vend=$src/vendor/github.com/modern-go/reflect2
if ! cmp -s /usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go "$vend/reflect2.go"; then
  find "$vend" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$vend/"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vend/" 2>/dev/null || true
  find "$vend" -name '*_test.go' -delete
fi

mkdir -p "$src/.go/src/k8s.io"
ln -sfn "$src" "$src/.go/src/k8s.io/kubernetes"
cd "$src/.go/src/k8s.io/kubernetes"
# A code generator left empty by an earlier failed run breaks every later one.
if [ -d _output ] && find _output -type f -empty -path '*bin*' | grep -q .; then rm -rf _output; fi
GOPATH=$src/.go CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"
mkdir -p "$BIN"
for b in "${WANT[@]}"; do cp "_output/bin/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"; done
# The pause container of every pod sandbox.
gcc -static -O2 -o "$BIN/pause" build/pause/linux/pause.c 2>/dev/null || gcc -static -O2 -o "$BIN/pause" build/pause/pause.c
echo "kubernetes $VERSION binaries in $BIN"
