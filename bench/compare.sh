#!/usr/bin/env bash
# Measures the Python reference server and this one with the same loadgen
# scenarios in one run (each repeated, medians and ratios) and writes
# bench/results/<date>.md. Usage: bench/compare.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venvs.sh
cargo build --release --bins --quiet
exec .venv/addon/bin/python bench/compare.py "$@"
