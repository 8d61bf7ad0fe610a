#!/usr/bin/env bash
# Stops the local e2e cluster started by up.sh (its processes, its pod containers, the kubelet's
# mounts, and dockerd if up.sh started it). The cached binaries, certificates and etcd data stay,
# so the next up.sh is quick. Idempotent.
set -uo pipefail
CACHE=${RAG_E2E_CACHE:-$HOME/.cache/rag-node}
STATE=$CACHE/e2e-cluster
stop() {
  local f=$STATE/$1.pid
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
for c in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
if docker info >/dev/null 2>&1; then
  ids=$(docker ps -aq --filter name=k8s_)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
fi
grep -o '/var/lib/rag-e2e-kubelet[^ ]*' /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
stop dockerd
exit 0
