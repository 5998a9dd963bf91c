#!/usr/bin/env bash
# TLS handshakes per second through HAProxy's TLS port: the direct `bind :443 ssl crt` of the
# configuration before TLS-ALPN-01 routing ("direct") against deploy/haproxy.cfg as shipped
# ("alpn-routing": a mode tcp frontend reading the ClientHello, then a PROXY v2 hop over an
# abstract socket to the `ssl crt` frontend). Both HAProxy processes run at once on free
# loopback ports with the same certificate (ECDSA P-256, as haproxy-acme issues by default);
# `openssl s_time -new` (full handshakes, one connection at a time, TLS 1.3) is run against
# each in turn, ROUNDS times, alternating; the medians are printed as a Markdown row.
#
# Usage: scripts/bench-tls-alpn.sh [SECONDS_PER_ROUND [ROUNDS]]   (default 5 s, 7 rounds)
# Environment: HAPROXY_BIN [haproxy]. Figures in BENCHMARKS.md ("TLS-ALPN-01 routing").
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-7}
hap=${HAPROXY_BIN:-haproxy}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/certs/bench.test.pem"

# The TLS frontend as deploy/haproxy.cfg had it before the ALPN routing (same global/defaults).
cat >"$work/direct.cfg" <<'EOF'
global
    stats socket "${HAPROXY_RUNTIME_SOCKET}" mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_https
    bind "${HAPROXY_HTTPS_BIND}" ssl crt "${CERTS_DIR}/"
    default_backend be_app
backend be_app
    server app "${APP_BACKEND}"
EOF

start() { # name config https_port
  local name=$1 cfg=$2 port=$3
  env HAPROXY_HTTP_BIND="127.0.0.1:$(free_port)" HAPROXY_HTTPS_BIND="127.0.0.1:$port" \
    CERTS_DIR="$work/certs" HAPROXY_RUNTIME_SOCKET="$work/$name.sock" \
    ACME_RESPONDER=127.0.0.1:9 APP_BACKEND=127.0.0.1:9 ACME_TLS_ALPN_RESPONDER=127.0.0.1:9 \
    HAPROXY_TLS_HOP="abns@haproxy-acme-bench-$port" \
    "$hap" -W -f "$cfg" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
direct_port=$(free_port)
alpn_port=$(free_port)
start direct "$work/direct.cfg" "$direct_port"
start alpn deploy/haproxy.cfg "$alpn_port"
for port in "$direct_port" "$alpn_port"; do
  for _ in $(seq 100); do
    openssl s_client -connect "127.0.0.1:$port" -servername bench.test </dev/null >/dev/null 2>&1 && break
    sleep 0.1
  done
done

rate() { # port -> handshakes per second (wall clock)
  openssl s_time -connect "127.0.0.1:$1" -new -time "$secs" 2>/dev/null |
    awk '/connections in [0-9.]+ real seconds/ { for (i = 1; i <= NF; i++) if ($i == "connections") n = $(i-1); for (i = 1; i <= NF; i++) if ($i == "real") t = $(i-1); printf "%.0f\n", n / t; exit }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

d=(); a=()
for r in $(seq "$rounds"); do
  d+=("$(rate "$direct_port")")
  a+=("$(rate "$alpn_port")")
  echo "round $r: direct ${d[-1]}/s, alpn-routing ${a[-1]}/s" >&2
done
md=$(printf '%s\n' "${d[@]}" | median)
ma=$(printf '%s\n' "${a[@]}" | median)
version=$("$hap" -v | awk 'NR == 1 { print $3 }')
echo "| HAProxy $version | $md | $ma | $(awk -v d="$md" -v a="$ma" 'BEGIN { printf "%+.1f %%", (a - d) * 100 / d }') | $(printf '%s ' "${d[@]}")/ $(printf '%s ' "${a[@]}")|"
