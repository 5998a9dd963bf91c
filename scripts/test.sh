#!/usr/bin/env bash
# Runs every test: unit tests of both crates and the end-to-end tests against a real pebble and
# HAProxy (started by the tests themselves on free loopback ports). Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
