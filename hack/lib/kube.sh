# shellcheck shell=bash
# The Kubernetes control plane of the test bed: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake node), all on
# 127.0.0.1, all state under $TESTBED_DIR. Sourced by hack/testbed.
#
#   $TESTBED_DIR/ports.env       ports picked once per state dir (kept across restarts)
#   $TESTBED_DIR/pki/            CA, serving cert, client certs, service-account key pair
#   $TESTBED_DIR/kubeconfig      admin kubeconfig (client cert in group system:masters)
#   $TESTBED_DIR/etcd/           etcd data
#   $TESTBED_DIR/run/*.pid       recorded processes;  $TESTBED_DIR/logs/*.log  their output

KWOK_NODE_NAME=kwok-node-0

kube_ports() {
  local f="$TESTBED_DIR/ports.env"
  if [[ ! -s "$f" ]]; then
    {
      echo "ETCD_CLIENT_PORT=$(free_port)"
      echo "ETCD_PEER_PORT=$(free_port)"
      echo "APISERVER_PORT=$(free_port)"
      echo "KCM_PORT=$(free_port)"
      echo "SCHEDULER_PORT=$(free_port)"
    } >"$f.tmp"
    mv "$f.tmp" "$f"
  fi
  # shellcheck disable=SC1090
  . "$f"
}

# pki_ca NAME CN: a self-signed CA.
pki_ca() {
  local name=$1 cn=$2 d="$TESTBED_DIR/pki"
  [[ -s "$d/$name.crt" ]] && return 0
  printf '%s\n' "[req]" "distinguished_name = dn" "prompt = no" "[dn]" "CN = $cn" \
    "[ext]" "basicConstraints = critical, CA:TRUE" "keyUsage = critical, keyCertSign, cRLSign, digitalSignature" \
    "subjectKeyIdentifier = hash" >"$d/$name.cnf"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/$name.key" 2>/dev/null
  openssl req -x509 -new -key "$d/$name.key" -config "$d/$name.cnf" -extensions ext -days 3650 -out "$d/$name.crt"
}

# pki_cert NAME CN O EKU SAN [CA]: key + cert signed by CA (default: the test bed CA).
pki_cert() {
  local name=$1 cn=$2 org=$3 eku=$4 san=$5 ca=${6:-ca} d="$TESTBED_DIR/pki"
  [[ -s "$d/$name.crt" ]] && return 0
  {
    echo "[req]"; echo "distinguished_name = dn"; echo "prompt = no"
    echo "[dn]"; [[ -n "$org" ]] && echo "O = $org"; echo "CN = $cn"
    echo "[ext]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    [[ -n "$san" ]] && echo "subjectAltName = $san"
  } >"$d/$name.cnf"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -config "$d/$name.cnf" -out "$d/$name.csr"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -extfile "$d/$name.cnf" -extensions ext -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr"
}

kube_pki() {
  local d="$TESTBED_DIR/pki"
  mkdir -p "$d"
  chmod 700 "$d"
  if [[ ! -s "$d/ca.crt" ]]; then
    log "generating test bed PKI in $d"
    rm -f "$d"/*.crt
  fi
  pki_ca ca mcp-keycloak-operator-testbed-ca
  # Front proxy (request-header authentication for aggregated APIs), as kubeadm sets it up.
  pki_ca front-proxy-ca mcp-keycloak-operator-testbed-front-proxy-ca
  pki_cert front-proxy-client front-proxy-client "" clientAuth "" front-proxy-ca
  pki_cert apiserver kube-apiserver "" serverAuth \
    "IP:127.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
  pki_cert admin testbed-admin system:masters clientAuth ""
  pki_cert kube-controller-manager system:kube-controller-manager "" clientAuth ""
  pki_cert kube-scheduler system:kube-scheduler "" clientAuth ""
  if [[ ! -s "$d/sa.pub" ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" 2>/dev/null
    openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub"
  fi
  chmod 600 "$d"/*.key
}

# write_kubeconfig FILE CERTNAME: self-contained kubeconfig (embedded certs).
write_kubeconfig() {
  local file=$1 name=$2 d="$TESTBED_DIR/pki"
  (
    umask 077
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$d/$name.crt")
    client-key-data: $(base64 -w0 <"$d/$name.key")
contexts:
- name: testbed
  context:
    cluster: testbed
    user: $name
current-context: testbed
EOF
  )
  mv "$file.tmp" "$file"
}

kube_prepare() {
  mkdir -p "$TESTBED_DIR/run" "$TESTBED_DIR/logs"
  kube_ports
  kube_pki
  write_kubeconfig "$TESTBED_DIR/kubeconfig" admin
  write_kubeconfig "$TESTBED_DIR/pki/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$TESTBED_DIR/pki/kube-scheduler.kubeconfig" kube-scheduler
}

KUBECTL() { "$(K8S_BIN_DIR)/kubectl" --kubeconfig "$TESTBED_DIR/kubeconfig" "$@"; }

etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() {
  local d="$TESTBED_DIR/pki"
  curl -fsS --cacert "$d/ca.crt" --cert "$d/admin.crt" --key "$d/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -q '^ok$'
}
component_healthy() { curl -fsSk "https://127.0.0.1:$1/healthz" | grep -q '^ok$'; }

start_etcd() {
  local pf="$TESTBED_DIR/run/etcd.pid" lf="$TESTBED_DIR/logs/etcd.log"
  if ! pid_alive "$pf"; then
    port_free_or_die "$ETCD_CLIENT_PORT" etcd
    port_free_or_die "$ETCD_PEER_PORT" "etcd peer"
    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT"
    # --unsafe-no-fsync: a throw-away test store; fsync would only slow tests down.
    spawn "$pf" "$lf" "$(ETCD_BIN)" --name testbed --data-dir "$TESTBED_DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync --log-level warn
  fi
  wait_until 60 "$pf" etcd "$lf" etcd_healthy
}

start_apiserver() {
  local pf="$TESTBED_DIR/run/kube-apiserver.pid" lf="$TESTBED_DIR/logs/kube-apiserver.log" p="$TESTBED_DIR/pki"
  if ! pid_alive "$pf"; then
    port_free_or_die "$APISERVER_PORT" kube-apiserver
    log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
    # --endpoint-reconciler-type=none: the 'kubernetes' Service gets no endpoints
    # (a loopback address is not a valid endpoint); nothing in-cluster needs it.
    spawn "$pf" "$lf" "$(K8S_BIN_DIR)/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
      --cert-dir="$p" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
      --client-ca-file="$p/ca.crt" \
      --requestheader-client-ca-file="$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
      --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
      --requestheader-extra-headers-prefix=X-Remote-Extra- \
      --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
      --service-cluster-ip-range=10.96.0.0/16 \
      --authorization-mode=Node,RBAC --allow-privileged=true \
      --endpoint-reconciler-type=none --profiling=false --v=1 \
      --shutdown-watch-termination-grace-period=2s
  fi
  wait_until 120 "$pf" kube-apiserver "$lf" apiserver_ready
}

start_controller_manager() {
  local pf="$TESTBED_DIR/run/kube-controller-manager.pid" lf="$TESTBED_DIR/logs/kube-controller-manager.log" p="$TESTBED_DIR/pki"
  if ! pid_alive "$pf"; then
    port_free_or_die "$KCM_PORT" kube-controller-manager
    log "starting kube-controller-manager"
    # --controllers='*': all default controllers (garbage collector, namespace,
    # deployment, replicaset, serviceaccount(-token), ...). The cloud ones skip
    # themselves without a cloud provider.
    mkdir -p "$TESTBED_DIR/run/kcm-certs"
    spawn "$pf" "$lf" "$(K8S_BIN_DIR)/kube-controller-manager" \
      --kubeconfig="$p/kube-controller-manager.kubeconfig" \
      --authentication-kubeconfig="$p/kube-controller-manager.kubeconfig" \
      --authorization-kubeconfig="$p/kube-controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$TESTBED_DIR/run/kcm-certs" \
      --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
      --use-service-account-credentials=true \
      --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
      --service-cluster-ip-range=10.96.0.0/16 \
      --controllers='*' --leader-elect=false --v=1
  fi
}

start_scheduler() {
  local pf="$TESTBED_DIR/run/kube-scheduler.pid" lf="$TESTBED_DIR/logs/kube-scheduler.log" p="$TESTBED_DIR/pki"
  if ! pid_alive "$pf"; then
    port_free_or_die "$SCHEDULER_PORT" kube-scheduler
    log "starting kube-scheduler"
    mkdir -p "$TESTBED_DIR/run/scheduler-certs"
    spawn "$pf" "$lf" "$(K8S_BIN_DIR)/kube-scheduler" \
      --kubeconfig="$p/kube-scheduler.kubeconfig" \
      --authentication-kubeconfig="$p/kube-scheduler.kubeconfig" \
      --authorization-kubeconfig="$p/kube-scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$TESTBED_DIR/run/scheduler-certs" \
      --leader-elect=false --v=1
  fi
}

# One fake node, managed by kwok: it becomes Ready, Pods bound to it get a
# Pod IP and turn Running/Ready (no container runs). No taint, so ordinary
# Deployments land there without tolerations. Pod IPs come from the loopback
# range 127.244.0.0/16: the local pod runner (crates/localpod) runs a pod's
# containers on this host's 0.0.0.0, so "pod IP + container port" reaches the
# running local pod as it would in a cluster (the operator's live verification
# reads pod IP:9090/mcp-status), and a pod with no local process refuses
# connections instead of sending packets off the host. All pod IPs reach the
# same host ports: readers must check whose answer they got (the gateway's
# status names its resource URL). Service IPs (10.96.x) are bookkeeping only:
# never connect to them. The node's address is 127.0.0.1 so that anything the
# API server would send to "the kubelet" (logs, exec) stays on loopback (and
# is refused).
KWOK_POD_CIDR=127.244.0.0/16
start_kwok() {
  local pf="$TESTBED_DIR/run/kwok.pid" lf="$TESTBED_DIR/logs/kwok.log" cf="$TESTBED_DIR/run/kwok.cidr"
  # A kwok started by an older script hands out other pod IPs: restart it.
  if pid_alive "$pf" && [[ "$(cat "$cf" 2>/dev/null)" != "$KWOK_POD_CIDR" ]]; then
    stop_pid "$pf" kwok
  fi
  if ! pid_alive "$pf"; then
    KUBECTL apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $KWOK_NODE_NAME
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $KWOK_NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
EOF
    # kwok fills in missing addresses only; pin them (also on nodes made by
    # older versions of this script).
    KUBECTL patch node "$KWOK_NODE_NAME" --subresource=status --type=merge -p \
      '{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":"'"$KWOK_NODE_NAME"'"}]}}' >/dev/null
    log "starting kwok (fake node $KWOK_NODE_NAME)"
    spawn "$pf" "$lf" "$(KWOK_BIN)" --kubeconfig="$TESTBED_DIR/kubeconfig" \
      --config="$CACHE_ROOT/bin/kwok-$KWOK_VERSION/stages.yaml" \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-lease-duration-seconds=40 --cidr="$KWOK_POD_CIDR" --node-ip=127.0.0.1
    echo "$KWOK_POD_CIDR" >"$cf"
  fi
}

node_ready() {
  KUBECTL get node "$KWOK_NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -q True
}
default_sa_exists() { KUBECTL -n default get serviceaccount default; }

kube_wait_controllers() {
  wait_until 90 "$TESTBED_DIR/run/kube-controller-manager.pid" kube-controller-manager \
    "$TESTBED_DIR/logs/kube-controller-manager.log" component_healthy "$KCM_PORT"
  wait_until 90 "$TESTBED_DIR/run/kube-scheduler.pid" kube-scheduler \
    "$TESTBED_DIR/logs/kube-scheduler.log" component_healthy "$SCHEDULER_PORT"
  wait_until 90 "$TESTBED_DIR/run/kwok.pid" "kwok node" "$TESTBED_DIR/logs/kwok.log" node_ready
  wait_until 90 "$TESTBED_DIR/run/kube-controller-manager.pid" "default ServiceAccount" \
    "$TESTBED_DIR/logs/kube-controller-manager.log" default_sa_exists
}

KUBE_COMPONENTS=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
