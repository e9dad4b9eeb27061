#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and end-to-end
# tests, then the interop tests that drive the built server with the real
# replication 0.9.10 client, once per client stack (add-on and upstream).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Python environments"
scripts/setup-venvs.sh

echo "== cargo fmt / clippy"
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo build --release --bins --quiet
cargo test --release --quiet

BIN="$PWD/target/release/replication-server"
export REPLICATION_SERVER_BIN="$BIN"
for stack in addon upstream; do
    echo "== interop tests: replication 0.9.10, $stack stack"
    ".venv/$stack/bin/python" -m pytest tests/interop -q -p no:cacheprovider
done

echo "== deployment kit"
.venv/addon/bin/python -m pytest tests/deploy -q -p no:cacheprovider
