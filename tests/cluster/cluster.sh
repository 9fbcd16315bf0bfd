#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for
# the tests, on a machine without Docker. See tests/cluster/README.md.
#
#   cluster.sh install   build/cache the binaries (idempotent; first run builds from source)
#   cluster.sh up        start the cluster, write $RUN/kubeconfig, wait until ready
#   cluster.sh down      stop everything and remove the run directory
#   cluster.sh env       print `export KUBECONFIG=...`  (use: eval "$(cluster.sh env)")
#   cluster.sh status    exit 0 if the cluster is up and ready
set -euo pipefail

CACHE="${HARTSLAG_CLUSTER_CACHE:-/var/cache/hartslag-cluster}"
RUN="${HARTSLAG_CLUSTER_RUN:-/tmp/hartslag-cluster}"
API_PORT="${HARTSLAG_CLUSTER_API_PORT:-6443}"
# Not etcd's default 2379/2380: installing Debian's etcd-server starts a system etcd there
# on machines with systemd.
ETCD_PORT="${HARTSLAG_CLUSTER_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${HARTSLAG_CLUSTER_ETCD_PEER_PORT:-12380}"
KCM_PORT="${HARTSLAG_CLUSTER_KCM_PORT:-10257}"
TIMEOUT="${HARTSLAG_CLUSTER_TIMEOUT:-120}"
# local (default): etcd + apiserver + controller-manager as processes.
# kind: use kind (needs `kind` and a working Docker engine). auto: kind if usable, else local.
MODE="${HARTSLAG_CLUSTER_MODE:-local}"
KIND_NAME="${HARTSLAG_CLUSTER_KIND_NAME:-hartslag}"

BIN="$CACHE/bin"
GO_DIR=/usr/lib/go-1.15
MARKER="$RUN/.hartslag-cluster"
SERVICE_CIDR=10.96.0.0/12
SA_ISSUER=https://kubernetes.default.svc.cluster.local

export DEBIAN_FRONTEND=noninteractive

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command with its output going to a log file; on failure show the tail and exit.
run_logged() {
  local logfile=$1
  shift
  printf '\n$ %s\n' "$*" >>"$logfile"
  if ! "$@" >>"$logfile" 2>&1; then
    printf '[cluster] ERROR: command failed: %s\n[cluster] last 60 lines of %s:\n' "$*" "$logfile" >&2
    tail -n 60 "$logfile" >&2
    exit 1
  fi
}

binaries_ok() {
  local b
  for b in kube-apiserver kube-controller-manager; do
    [[ -x "$BIN/$b" ]] || return 1
    "$BIN/$b" --version >/dev/null 2>&1 || return 1
  done
  command -v etcd >/dev/null 2>&1 || return 1
  command -v openssl >/dev/null 2>&1 || return 1
  command -v curl >/dev/null 2>&1 || return 1
  return 0
}

kind_usable() {
  command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 &&
    docker info >/dev/null 2>&1
}

resolve_mode() {
  case "$MODE" in
    local | kind) ;;
    auto) if kind_usable; then MODE=kind; else MODE=local; fi ;;
    *) die "HARTSLAG_CLUSTER_MODE must be local, kind or auto (got '$MODE')" ;;
  esac
}

# ---------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------

setup_apt_sources() {
  [[ $(id -u) == 0 ]] || die "install needs root (apt-get)"
  local f
  f=/etc/apt/sources.list.d/hartslag-cluster-bookworm-src.sources
  if [[ ! -f $f ]]; then
    cat >"$f" <<'EOF'
# Added by hartslag tests/cluster/cluster.sh: source of Debian's kubernetes package.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  f=/etc/apt/sources.list.d/hartslag-cluster-bullseye.sources
  if [[ ! -f $f ]]; then
    cat >"$f" <<'EOF'
# Added by hartslag tests/cluster/cluster.sh: only for golang-1.15-go (see the pin in
# /etc/apt/preferences.d/hartslag-cluster-bullseye).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  f=/etc/apt/preferences.d/hartslag-cluster-bullseye
  if [[ ! -f $f ]]; then
    # Priority 1: a bullseye version is only ever chosen for a package that has no
    # installed version and no bookworm version, so nothing gets upgraded from bullseye.
    cat >"$f" <<'EOF'
Package: *
Pin: release n=bullseye
Pin-Priority: 1
EOF
  fi
  return 0
}

cmd_install() {
  resolve_mode
  if [[ $MODE == kind ]]; then
    kind_usable || die "MODE=kind but kind/docker engine not usable"
    log "kind mode: nothing to install"
    return 0
  fi
  if binaries_ok; then
    log "binaries present in $BIN ($("$BIN/kube-apiserver" --version))"
    return 0
  fi
  mkdir -p "$CACHE/logs"
  exec 9>"$CACHE/install.lock"
  flock -w 1800 9 || die "another install has held $CACHE/install.lock for 30 min"
  if binaries_ok; then # someone else finished while we waited for the lock
    log "binaries present in $BIN"
    return 0
  fi
  local start=$SECONDS aptlog="$CACHE/logs/apt.log" buildlog="$CACHE/logs/build.log"
  : >"$aptlog"

  log "apt: sources, etcd-server, golang-1.15-go (log: $aptlog)"
  setup_apt_sources
  run_logged "$aptlog" apt-get update
  # Only what is missing (naming an installed package would also upgrade it).
  local pkg missing=()
  for pkg in etcd-server dpkg-dev rsync jq openssl curl ca-certificates make util-linux \
    golang-1.15-go; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    run_logged "$aptlog" apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  "$GO_DIR/bin/go" version >/dev/null || die "Go 1.15 not usable at $GO_DIR"
  # On systemd machines the package starts a system etcd on 2379; we use our own.

  if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]] &&
    "$BIN/kube-apiserver" --version >/dev/null 2>&1 &&
    "$BIN/kube-controller-manager" --version >/dev/null 2>&1; then
    log "binaries already built"
    return 0
  fi

  local build="$CACHE/build"
  rm -rf "$build"
  mkdir -p "$build"
  log "fetching Debian's kubernetes source package"
  (cd "$build" && run_logged "$aptlog" apt-get source --download-only kubernetes)
  local dsc
  dsc=$(find "$build" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n1)
  [[ -n $dsc && -f $dsc ]] || die "no kubernetes .dsc downloaded (see $aptlog)"
  (cd "$build" && run_logged "$aptlog" dpkg-source -x --skip-patches "$dsc" src)
  local src="$build/src"
  # Version: 1.20.5+really1.20.2-1 -> v1.20.2 (shown by --version and /version).
  local debver upver
  debver=$(sed -n 's/^Version: //p' "$dsc")
  upver=${debver%-*}
  upver=${upver##*really}
  upver=${upver%%+*}

  log "building kube-apiserver and kube-controller-manager v$upver with Go 1.15" \
    "(takes minutes; log: $buildlog)"
  : >"$buildlog"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn "$src" "$src/.go/src/k8s.io/kubernetes"
  (
    cd "$src"
    export PATH="$GO_DIR/bin:$PATH" GOPATH="$src/.go" GOCACHE="$build/go-build" \
      CGO_ENABLED=0 GOPROXY=off GOSUMDB=off GOFLAGS=-mod=vendor \
      KUBE_GIT_VERSION="v$upver" KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT="" \
      GO111MODULE=on
    run_logged "$buildlog" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  )
  local out
  out=$(find "$src/_output" -type f -name kube-apiserver -path '*bin*' | head -n1)
  [[ -n $out ]] || die "build produced no kube-apiserver (see $buildlog)"
  mkdir -p "$BIN"
  install -m 0755 "$(dirname "$out")/kube-apiserver" "$(dirname "$out")/kube-controller-manager" "$BIN/"
  "$BIN/kube-apiserver" --version >/dev/null || die "built kube-apiserver does not run"
  "$BIN/kube-controller-manager" --version >/dev/null || die "built kube-controller-manager does not run"
  if [[ ${HARTSLAG_CLUSTER_KEEP_BUILD:-0} != 1 ]]; then
    rm -rf "$build"
  fi
  log "installed $("$BIN/kube-apiserver" --version) into $BIN in $((SECONDS - start))s"
}

# ---------------------------------------------------------------------------------------
# up / down
# ---------------------------------------------------------------------------------------

pid_alive() {
  local pidfile="$RUN/$1.pid" pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

api_ready() {
  [[ -f $RUN/token ]] || return 1
  curl -sk --max-time 3 -H "Authorization: Bearer $(<"$RUN/token")" \
    "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -qx ok
}

local_up_and_ready() {
  [[ -f $MARKER ]] && pid_alive etcd && pid_alive kube-apiserver &&
    pid_alive kube-controller-manager && api_ready
}

# start NAME CMD... : run in its own session, detached from our stdio, pid in $RUN/NAME.pid
start() {
  local name=$1
  shift
  printf '%q ' "$@" >"$RUN/$name.cmdline"
  # Close the lock fds (8, 9): a daemon holding them would block every later up/down.
  setsid "$@" </dev/null >"$RUN/logs/$name.log" 2>&1 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
}

fail_up() {
  printf '[cluster] ERROR: %s\n' "$*" >&2
  local f
  for f in "$RUN"/logs/*.log; do
    [[ -s $f ]] || continue
    printf '\n[cluster] ---- last 40 lines of %s ----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
  printf '\n[cluster] ERROR: %s\n' "$*" >&2
  printf '[cluster] state left in %s for inspection; "%s down" cleans up\n' "$RUN" "$0" >&2
  exit 1
}

# wait_for WHAT PROCESS CHECK...: poll CHECK until it succeeds or the deadline passes.
wait_for() {
  local what=$1 proc=$2
  shift 2
  while ! "$@"; do
    [[ -z $proc ]] || pid_alive "$proc" || fail_up "$proc exited while waiting for $what"
    ((SECONDS < DEADLINE)) || fail_up "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

etcd_healthy() {
  curl -s --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}
kcm_healthy() {
  curl -sk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null | grep -qx ok
}
default_sa_exists() {
  kubectl --kubeconfig "$RUN/kubeconfig" --request-timeout=3s \
    get serviceaccount default -n default >/dev/null 2>&1
}

gen_pki() {
  local pki="$RUN/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
EOF
    openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key
    openssl req -config openssl.cnf -x509 -new -key ca.key -sha256 -days 3650 \
      -subj /CN=hartslag-cluster-ca -extensions ca -out ca.crt
    openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out apiserver.key
    openssl req -config openssl.cnf -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
      -days 3650 -extfile openssl.cnf -extensions server -out apiserver.crt 2>/dev/null
    openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    chmod 600 ./*.key
  ) >"$RUN/logs/pki.log" 2>&1 || fail_up "generating certificates failed"
}

write_kubeconfig() {
  local token=$1 tls
  if [[ ${HARTSLAG_CLUSTER_INSECURE:-0} == 1 ]]; then
    tls="insecure-skip-tls-verify: true"
  else
    tls="certificate-authority-data: $(base64 -w0 <"$RUN/pki/ca.crt")"
  fi
  umask 077
  cat >"$RUN/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hartslag
  cluster:
    server: https://127.0.0.1:$API_PORT
    $tls
users:
- name: hartslag-admin
  user:
    token: $token
contexts:
- name: hartslag
  context:
    cluster: hartslag
    user: hartslag-admin
    namespace: default
current-context: hartslag
EOF
  mv "$RUN/kubeconfig.tmp" "$RUN/kubeconfig"
  umask 022
}

up_local() {
  if local_up_and_ready; then
    log "already up: export KUBECONFIG=$RUN/kubeconfig"
    return 0
  fi
  if [[ -e $RUN ]]; then
    log "stale state in $RUN; cleaning up first"
    down_local
  fi
  binaries_ok || cmd_install
  binaries_ok || die "binaries missing after install"
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found in PATH"

  local p
  for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"; do
    port_in_use "$p" && die "port 127.0.0.1:$p is already in use (override with HARTSLAG_CLUSTER_*_PORT)"
  done

  local start_s=$SECONDS
  DEADLINE=$((SECONDS + TIMEOUT))
  mkdir -p "$RUN/logs" "$RUN/etcd"
  chmod 700 "$RUN/etcd"
  : >"$MARKER"
  gen_pki
  local token
  token=$(openssl rand -hex 32)
  printf '%s' "$token" >"$RUN/token"
  printf '%s,hartslag-admin,hartslag-admin,"system:masters"\n' "$token" >"$RUN/tokens.csv"
  chmod 600 "$RUN/token" "$RUN/tokens.csv"
  write_kubeconfig "$token"

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd etcd \
    --name hartslag \
    --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "hartslag=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --logger=zap \
    --log-outputs=stderr \
    --unsafe-no-fsync
  wait_for "etcd health" etcd etcd_healthy

  # Every request at Metadata level (who, verb, resource, URI), so tests and benchmarks can
  # count what a client sends; health probes are left out.
  cat >"$RUN/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version"]
  - level: Metadata
POLICY

  log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" \
    --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$RUN/pki/apiserver.crt" \
    --tls-private-key-file="$RUN/pki/apiserver.key" \
    --cert-dir="$RUN/apiserver-certs" \
    --token-auth-file="$RUN/tokens.csv" \
    --client-ca-file="$RUN/pki/ca.crt" \
    --requestheader-client-ca-file="$RUN/pki/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --authorization-mode=RBAC \
    --service-account-key-file="$RUN/pki/sa.pub" \
    --service-account-signing-key-file="$RUN/pki/sa.key" \
    --service-account-issuer="$SA_ISSUER" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --audit-policy-file="$RUN/audit-policy.yaml" \
    --audit-log-path="$RUN/logs/audit.log" \
    --audit-log-format=json \
    --profiling=false \
    --v=1
  wait_for "kube-apiserver /readyz" kube-apiserver api_ready

  log "starting kube-controller-manager (secure port 127.0.0.1:$KCM_PORT)"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$RUN/kubeconfig" \
    --authentication-kubeconfig="$RUN/kubeconfig" \
    --authorization-kubeconfig="$RUN/kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --port=0 \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$RUN/pki/sa.key" \
    --root-ca-file="$RUN/pki/ca.crt" \
    --cluster-signing-cert-file="$RUN/pki/ca.crt" \
    --cluster-signing-key-file="$RUN/pki/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=false \
    --v=1
  wait_for "kube-controller-manager /healthz" kube-controller-manager kcm_healthy
  wait_for "the default ServiceAccount (controllers running)" kube-controller-manager default_sa_exists

  log "ready in $((SECONDS - start_s))s: export KUBECONFIG=$RUN/kubeconfig"
}

# stop NAME: TERM the process from $RUN/NAME.pid, wait for it to exit, KILL after 20 s.
stop() {
  local name=$1 pidfile="$RUN/$1.pid" pid i
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not exit after TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

down_local() {
  [[ -e $RUN ]] || return 0
  case "$RUN" in
    / | /tmp | /var | /root | "$HOME") die "refusing to remove run directory '$RUN'" ;;
  esac
  [[ -f $MARKER ]] || die "$RUN exists but is not a hartslag cluster run directory; not touching it"
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  rm -rf "$RUN"
}

# Serialise up/down on the same run directory.
lock_run() {
  mkdir -p "$(dirname "$RUN")"
  exec 8>"$RUN.cmd-lock"
  flock -w 300 8 || die "another cluster.sh up/down on $RUN has held $RUN.cmd-lock for 300 s"
}

cmd_up() {
  resolve_mode
  lock_run
  if [[ $MODE == kind ]]; then
    kind_usable || die "MODE=kind but kind/docker engine not usable"
    mkdir -p "$RUN"
    : >"$MARKER"
    echo kind >"$RUN/mode"
    if ! kind get clusters 2>/dev/null | grep -qx "$KIND_NAME"; then
      kind create cluster --name "$KIND_NAME" --kubeconfig "$RUN/kubeconfig" --wait "${TIMEOUT}s"
    else
      kind get kubeconfig --name "$KIND_NAME" >"$RUN/kubeconfig"
    fi
    log "ready: export KUBECONFIG=$RUN/kubeconfig"
    return 0
  fi
  up_local
}

cmd_down() {
  lock_run
  if [[ -f $RUN/mode && $(<"$RUN/mode") == kind ]]; then
    kind delete cluster --name "$KIND_NAME" || true
    rm -rf "$RUN"
  else
    down_local
  fi
  log "down"
}

cmd_status() {
  if [[ -f $RUN/mode && $(<"$RUN/mode") == kind ]]; then
    kubectl --kubeconfig "$RUN/kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1
  else
    local_up_and_ready
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  env) printf 'export KUBECONFIG=%q\n' "$RUN/kubeconfig" ;;
  status) if cmd_status; then echo up; else echo down; exit 1; fi ;;
  *)
    echo "usage: $0 {install|up|down|env|status}" >&2
    exit 2
    ;;
esac
