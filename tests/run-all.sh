#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks and every test. This is the command README.md gives and
# .ci/run executes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E 'clippy|rustfmt' || true

log "test dependencies"
# A real SMTP server for the alert tests, the real Tickstem SDK for the API tests, and
# Helm's engine (without the helm binary) plus PyYAML for the chart tests.
if ! python3 -c "import aiosmtpd, tickstem, helm_python, yaml" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd tickstem helm-python-sdk pyyaml
fi
python3 -c "import aiosmtpd, tickstem, helm_python; print('aiosmtpd', aiosmtpd.__version__, '/ tickstem', tickstem.__version__, '/ helm', helm_python.helm_sdk_version())"

# umoci builds the image archive without a Docker daemon.
command -v umoci >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci; }

# Headless Chromium and its WebDriver for the dashboard's browser test.
command -v chromedriver >/dev/null && [ -x /usr/bin/chromium ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
}
chromedriver --version

# Prometheus (promtool for the chart's rules, a real scrape) and Alertmanager: the tests
# start their own on loopback ports from temporary directories. Without systemd the
# packages start no service; with it, the packaged services are stopped so they keep
# their default ports free of surprises.
command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true
  fi
}
promtool --version 2>&1 | head -1; prometheus-alertmanager --version 2>&1 | head -1

# PostgreSQL's server for the storage tests, which start their own as the unprivileged
# `postgres` user (the package creates it) on a loopback port from a temporary directory;
# the package's own cluster is stopped where systemd started it.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
}
ls /usr/lib/postgresql/*/bin/initdb

log "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

log "test control plane (etcd + kube-apiserver + kube-controller-manager; kind where configured)"
bash tests/cluster/cluster.sh install
bash tests/cluster/cluster.sh up
trap 'bash tests/cluster/cluster.sh down >/dev/null 2>&1 || true' EXIT
eval "$(bash tests/cluster/cluster.sh env)"
command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubernetes-client; }

log "tests (cluster tests included: KUBECONFIG=$KUBECONFIG)"
cargo test --no-fail-fast --lib --bins --tests -- --include-ignored 2>&1 | tee /tmp/hartslag-cargo-test.log

log "the integration tests again, on PostgreSQL"
# HARTSLAG_TEST_BACKEND=postgres: every server and operator the tests start keeps its data
# in a database of the shared test PostgreSQL instead of its sled directory. A test about
# sled itself says so and skips on this lane (helpers::runs_on_sled). Left out, each with
# why it does not run twice:
not_on_postgres=(
    boundary::               # reads the source; starts no server
    chart::                  # renders the Helm chart and applies it; starts no server
    crds::                   # compares `hartslag crd` with crds/; no storage
    image::                  # builds the OCI image and runs `hartslag --version`
    storage_port::           # runs its contract against both backends itself
    pg_failover::            # on PostgreSQL by itself (replicas, outages)
    pg_leader::              # on PostgreSQL by itself (the advisory lock)
    pg_migrate::             # from a sled directory to PostgreSQL by itself
    pg_relay::               # on PostgreSQL by itself (pings through followers)
    pg_replicas::            # on PostgreSQL by itself (several writers)
    pg_schema::              # on PostgreSQL by itself (migrations)
    operator_e2e::failover:: # two operators on one database by itself
)
skips=()
for m in "${not_on_postgres[@]}"; do skips+=(--skip "$m"); done
HARTSLAG_TEST_BACKEND=postgres cargo test --no-fail-fast --test it -- --include-ignored "${skips[@]}" \
    2>&1 | tee -a /tmp/hartslag-cargo-test.log

# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' /tmp/hartslag-cargo-test.log
