# Routine tasks. `just --list` shows them all.

# Build the binary (debug).
build:
    cargo build

# Run the whole test suite, installing what the tests need (the command CI runs).
test:
    bash tests/run-all.sh

# Unit and integration tests only (no installs).
test-rust:
    cargo test

# Start the standalone server on the example manifests.
run:
    cargo run -- standalone --manifests examples/standalone --data ./hartslag-data --listen 127.0.0.1:8080

# Ingest load benchmark (no-op handler vs durable ingest).
bench:
    cargo bench --bench ingest

# Formatting and lints as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
