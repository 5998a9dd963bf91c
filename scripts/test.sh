#!/usr/bin/env bash
# Runs every test: unit tests of both crates and the end-to-end tests against a real pebble and
# HAProxy (started by the tests themselves on free loopback ports). Installs what is missing.
# The suite's CA is pebble 2.10 (renewal information, profiles), which install-deps.sh puts into
# LAB_DIR through scripts/lab.sh; tests/e2e.rs runs once more against Debian bookworm's pebble 2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The release binary, built exactly as deploy/Dockerfile builds it.
cargo build --release --locked --bin haproxy-acme
mkdir -p target
# Not --all-targets: the benchmark (benches/compare.rs) runs ~15 min and rewrites BENCHMARKS.md;
# it is built by clippy above and run by scripts/bench.sh. --no-fail-fast: one failing test
# binary does not hide the others' results.
cargo test --workspace --lib --bins --tests --no-fail-fast 2>&1 | tee target/test-output.log
# The simulated-time suite again in release: 10,000 seeded schedules (tests/simulation.rs).
cargo test --release --locked --test simulation 2>&1 | tee -a target/test-output.log
# The HAProxy-facing end-to-end tests once more against HAProxy 3.2 LTS (Debian sid's, with its
# own libraries, from scripts/lab.sh via install-deps.sh); scripts/haproxy-matrix.sh runs 2.6,
# 3.0, 3.2 and 3.4.
HAPROXY_BIN=${LAB_DIR:-/var/cache/haproxy-acme-lab}/bin/haproxy-3.2 \
  cargo test --no-fail-fast --test e2e --test installer 2>&1 | tee -a target/test-output.log
# tests/e2e.rs once more against Debian bookworm's pebble 2.4 (`pebble` on PATH): a CA without
# renewal information (ARI) and without profiles, so the lifetime rule schedules the renewal.
PEBBLE_BIN=pebble CHALLTESTSRV_BIN=pebble-challtestsrv \
  cargo test --no-fail-fast --test e2e 2>&1 | tee -a target/test-output.log
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' \
  target/test-output.log
