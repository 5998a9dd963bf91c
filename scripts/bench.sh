#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md: starts pebble and HAProxy on free loopback ports, runs every
# scenario for haproxy-acme (release build) and its peers (uacme, certbot, lego) in the same run,
# alternating, and writes the results table into BENCHMARKS.md. Installs what it needs from Debian
# (needs root or sudo; uacme's CA trust uses a private mount namespace, which needs root).
# Settings: see the top of benches/compare.rs (e.g. BENCH_SCENARIOS=1,6 BENCH_RUNS=3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
need=()
for pair in lego:lego uacme:uacme wrk:wrk python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >&2
  $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
exec cargo bench --bench compare
