#!/usr/bin/env bash
# Brings up a real single-node Kubernetes 1.20 on this machine (etcd, kube-apiserver with RBAC,
# controller-manager, scheduler, kubelet on docker, kube-proxy), as docs/e2e-cluster.md
# describes. Idempotent: a running, healthy cluster is left alone. Writes the admin kubeconfig to
# $STATE/kubeconfig and prints its path on the last line. Everything listens on loopback or on
# docker's bridge address; nothing targets another machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${RAG_E2E_CACHE:-$HOME/.cache/rag-node}
STATE=$CACHE/e2e-cluster
BIN=$CACHE/k8s/1.20.2/bin
LOGS=$STATE/logs
mkdir -p "$STATE" "$LOGS"
export KUBECONFIG=$STATE/kubeconfig

"$here/build-k8s.sh"

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
pkgs=(docker.io iptables conntrack etcd-server openssl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
start() { # name, command...
  local name=$1; shift
  alive "$name" && return 0
  nohup "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}
wait_for() { # description, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $what; logs in $LOGS" >&2
  return 1
}

# --- docker, with a runtime wrapper: this sandbox cannot lower oom_score_adj, which kubelet asks
# for every pod sandbox; the wrapper raises negative values to 0 before runc sees them.
wrapper=/usr/local/lib/rag-node-e2e/runc-wrapper
$sudo_cmd mkdir -p "$(dirname "$wrapper")" /etc/docker
$sudo_cmd tee "$wrapper" >/dev/null <<'WRAP'
#!/bin/sh
bundle=""
prev=""
for a in "$@"; do
  [ "$prev" = "--bundle" ] && bundle=$a
  case $a in --bundle=*) bundle=${a#--bundle=} ;; esac
  prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec /usr/sbin/runc "$@"
WRAP
$sudo_cmd chmod 755 "$wrapper"
daemon_json='{"runtimes":{"rag-runc":{"path":"'$wrapper'"}},"default-runtime":"rag-runc","exec-opts":["native.cgroupdriver=cgroupfs"],"storage-driver":"overlay2"}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$daemon_json" ]; then
  echo "$daemon_json" | $sudo_cmd tee /etc/docker/daemon.json >/dev/null
  if docker info >/dev/null 2>&1; then pkill -x dockerd || true; sleep 3; fi
fi
if ! docker info >/dev/null 2>&1; then
  rm -f "$STATE/dockerd.pid"
  start dockerd /usr/sbin/dockerd
  wait_for dockerd 60 docker info
fi
BRIDGE=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
[ -n "$BRIDGE" ] || { echo "docker0 has no address" >&2; exit 1; }

# --- certificates and credentials (made once)
pki=$STATE/pki
if [ ! -f "$pki/apiserver.crt" ] || ! grep -q "$BRIDGE" "$pki/sans" 2>/dev/null; then
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=rag-e2e-ca \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  sans="IP:127.0.0.1,IP:$BRIDGE,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  echo "$sans" >"$pki/sans"
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$pki/apiserver.key" \
    -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" >"$pki/ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  echo "$(openssl rand -hex 24),admin,admin,\"system:masters\"" >"$pki/tokens.csv"
  rm -f "$STATE/kubeconfig"
fi
token=$(cut -d, -f1 "$pki/tokens.csv")
server=https://$BRIDGE:6443
cat >"$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
KC
chmod 600 "$STATE/kubeconfig"

# --- control plane
start etcd etcd --name rag-e2e --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
  --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
  --initial-cluster rag-e2e=http://127.0.0.1:12380
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:12379 \
  --bind-address="$BRIDGE" --advertise-address="$BRIDGE" --secure-port=6443 \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --authorization-mode=Node,RBAC --service-cluster-ip-range=10.0.0.0/24 \
  --kubelet-preferred-address-types=InternalIP --allow-privileged=true
wait_for kube-apiserver 90 kubectl get --raw /readyz
start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$KUBECONFIG" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --leader-elect=false --controllers='*,-nodeipam' --use-service-account-credentials=true
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$KUBECONFIG" --leader-elect=false

# --- the node
if ! docker image inspect rag-e2e/pause:3.2 >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  cp "$BIN/pause" "$tmp/pause"
  tar -C "$tmp" -cf "$tmp/rootfs.tar" pause
  docker import --change 'ENTRYPOINT ["/pause"]' "$tmp/rootfs.tar" rag-e2e/pause:3.2 >/dev/null
  rm -rf "$tmp"
fi
cat >"$STATE/kubelet.yaml" <<KL
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $BRIDGE
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
KL
start kubelet "$BIN/kubelet" --kubeconfig="$KUBECONFIG" --config="$STATE/kubelet.yaml" \
  --container-runtime=docker --pod-infra-container-image=rag-e2e/pause:3.2 \
  --root-dir=/var/lib/rag-e2e-kubelet --hostname-override=e2e-node --node-ip="$BRIDGE"
start kube-proxy "$BIN/kube-proxy" --kubeconfig="$KUBECONFIG" --proxy-mode=iptables \
  --cluster-cidr=172.17.0.0/16 --conntrack-max-per-core=0 --hostname-override=e2e-node
wait_for "node e2e-node Ready" 120 sh -c \
  "kubectl get node e2e-node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"

# --- storage: no provisioner exists here, so static hostPath volumes of one storage class,
# writable by the non-root users the pods run as. Released volumes are wiped and made Available.
kubectl apply -f - >/dev/null <<SC
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-hostpath, annotations: {storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate
SC
for i in $(seq 0 11); do
  name=e2e-pv-$i
  dir=$STATE/volumes/$name
  phase=$(kubectl get pv "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  if [ "$phase" = Released ] || [ "$phase" = Failed ]; then
    kubectl delete pv "$name" --wait=true >/dev/null
    phase=""
  fi
  if [ -z "$phase" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 0777 "$dir"
    kubectl apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: $name, labels: {rag-e2e: "true"}}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: e2e-hostpath
  hostPath: {path: $dir, type: Directory}
PV
  fi
done
echo "$KUBECONFIG"
