#!/usr/bin/env bash
# Runs the HAProxy-facing tests against every HAProxy version we support and prints a table:
#   2.6 (the system's, Debian bookworm), 3.0, 3.2, 3.4 (scripts/lab.sh, in LAB_DIR).
# Per version: `haproxy -c` of deploy/haproxy.cfg with the compose environment, warnings refused
# (tests/deploy.rs), then tests/e2e.rs and tests/installer.rs, with HAPROXY_BIN set to it.
# Too slow for every CI run (~1 min per version); CI runs 2.6 and 3.2 (scripts/test.sh).
#
# Usage: scripts/haproxy-matrix.sh [VERSION...]   (default: 2.6 3.0 3.2 3.4; 2.6 = `haproxy` on PATH)
# Environment: LAB_DIR [/var/cache/haproxy-acme-lab]. Exit status 1 if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR=${LAB_DIR:-/var/cache/haproxy-acme-lab}
[ $# -gt 0 ] || set -- 2.6 3.0 3.2 3.4

lab=()
for v in "$@"; do [ "$v" = 2.6 ] || lab+=("$v"); done
[ ${#lab[@]} -eq 0 ] || bash scripts/lab.sh "$LAB_DIR" haproxy "${lab[@]}"
# Build once, so the seconds below are the tests' own.
cargo test --no-run --test deploy --test e2e --test installer 2>&1 | tail -n 1

mkdir -p target/haproxy-matrix
rows=(); bad=0
for v in "$@"; do
  if [ "$v" = 2.6 ]; then bin=$(command -v haproxy) || { echo "no haproxy on PATH" >&2; exit 1; }
  else bin="$LAB_DIR/bin/haproxy-$v"; fi
  full=$("$bin" -v 2>/dev/null | awk 'NR==1 {print $3}')
  log="target/haproxy-matrix/$v.log"
  echo "== HAProxy $full ($bin): log in $log" >&2
  start=$(date +%s)
  rc=0
  {
    HAPROXY_BIN=$bin cargo test --test deploy compose_haproxy_environment_makes_the_shipped_config_valid
    HAPROXY_BIN=$bin cargo test --no-fail-fast --test e2e --test installer
  } >"$log" 2>&1 || rc=$?
  secs=$(( $(date +%s) - start ))
  read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d %d\n", p, f }' "$log")
  # a failure with no failed test (a build error, a crash of the test binary) counts as one
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  [ "$failed" -eq 0 ] || bad=1
  rows+=("$(printf '| %-18s | %6s | %6s | %7s |' "$full" "$passed" "$failed" "$secs")")
done

printf '| %-18s | %6s | %6s | %7s |\n' HAProxy passed failed seconds
printf '| %-18s | %6s | %6s | %7s |\n' ------------------ ------ ------ -------
printf '%s\n' "${rows[@]}"
exit $bad
