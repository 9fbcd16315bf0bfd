# Routine tasks. `just --list` shows them all.

# Build the binary (debug).
build:
    cargo build

# The fast lane: formatting, lints and every test that needs no cluster and no browser.
check:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cargo test --lib --bins --tests -- --skip dashboard_browser::

# Run the whole test suite, installing what the tests need (the command CI runs).
test:
    bash tests/run-all.sh

# Start the standalone server on the example manifests.
run:
    cargo run -- standalone --manifests examples/standalone --data ./hartslag-data --listen 127.0.0.1:8080

# Ingest load benchmark (no-op handler vs durable ingest and pings).
bench:
    cargo bench --bench ingest

# The code's documentation, private items included (the design is documented there),
# with every broken intra-doc link an error.
docs:
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items

# Formatting and lints as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Regenerate the checked-in CustomResourceDefinitions (and the chart's copy).
crds:
    cargo run -q -- crd > crds/hartslag.dev.yaml
    cp crds/hartslag.dev.yaml charts/hartslag/crds/hartslag.dev.yaml

# Lint and render the Helm chart through Helm's engine, with assertions.
chart-lint:
    python3 tests/chart/test_chart.py

# Start the test control plane (prints nothing else; `eval "$(bash tests/cluster/cluster.sh env)"` to use it).
cluster-up:
    bash tests/cluster/cluster.sh up

# Stop the test control plane.
cluster-down:
    bash tests/cluster/cluster.sh down

# Operator end-to-end tests against the test control plane.
e2e: cluster-up
    KUBECONFIG=$(bash tests/cluster/cluster.sh env | sed 's/^export KUBECONFIG=//') cargo test --test it operator_e2e:: -- --include-ignored

# Scale benchmark of the monitor engine.
bench-monitors:
    cargo bench --bench monitors

# Build the image as an OCI archive without a Docker daemon (umoci); `docker build .` with one.
image:
    bash image/build-oci.sh target/hartslag-oci.tar
