#!/usr/bin/env bash
# Runs haproxy-acme end to end on this machine, loopback only: a local ACME CA (pebble, with
# pebble-challtestsrv as its DNS), HAProxy from deploy/haproxy.cfg, and the daemon issuing two
# demo certificates. Shows the served certificates and the state dump, then stops everything
# (DEMO_KEEP=1 keeps it running until Ctrl-C). Installs haproxy from Debian and pebble 2.10 (the
# tests' CA) into LAB_DIR [/var/cache/haproxy-acme-lab] through scripts/install-deps.sh when missing;
# PEBBLE_BIN and CHALLTESTSRV_BIN name other builds (`pebble`, `pebble-challtestsrv`: bookworm's 2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=${DEMO_DIR:-$ROOT/target/demo}
DOMAINS=${DEMO_DOMAINS:-"demo.example.test,www.demo.example.test;shop.example.test"}
ACME_PORT=${DEMO_ACME_PORT:-14000}  MGMT_PORT=${DEMO_MGMT_PORT:-15000}
HTTP_PORT=${DEMO_HTTP_PORT:-5002}   HTTPS_PORT=${DEMO_HTTPS_PORT:-8443}
RESPONDER_PORT=${DEMO_RESPONDER_PORT:-8402}
DNS_PORT=${DEMO_DNS_PORT:-8053}     CHALL_PORT=${DEMO_CHALL_PORT:-8055}

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bash scripts/install-deps.sh
LAB_BIN=${LAB_DIR:-/var/cache/haproxy-acme-lab}/bin
PEBBLE_BIN=${PEBBLE_BIN:-$LAB_BIN/pebble}
CHALLTESTSRV_BIN=${CHALLTESTSRV_BIN:-$LAB_BIN/pebble-challtestsrv}
# challtestsrv's DNS listener: -dns01 up to 2.4 (bookworm); -dnsserver in later ones (2.10), which
# also serve DNS over HTTPS on all interfaces (:8443, the demo's HTTPS port) unless -doh "".
# (-h exits 2: its text is read whole, not piped, so that pipefail does not turn a match into a miss)
challtestsrv_help=$("$CHALLTESTSRV_BIN" -h 2>&1 || true)
if [[ $challtestsrv_help == *-dnsserver* ]]; then
  dns_args=(-dnsserver "127.0.0.1:$DNS_PORT" -doh "")
else
  dns_args=(-dns01 "127.0.0.1:$DNS_PORT")
fi
for p in "$ACME_PORT" "$MGMT_PORT" "$HTTP_PORT" "$HTTPS_PORT" "$RESPONDER_PORT" "$DNS_PORT" "$CHALL_PORT"; do
  ! port_in_use "$p" || die "port 127.0.0.1:$p is in use (set DEMO_*_PORT, see the top of $0)"
done
say "building haproxy-acme"
cargo build --quiet
BIN=$ROOT/target/debug/haproxy-acme

rm -rf "$W"; mkdir -p "$W/certs" "$W/logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "pebble listener certificate (the CA's own HTTPS)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=demo listener CA" \
  -keyout "$W/listener-ca.key" -out "$W/listener-ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$W/pebble-key.pem" -out "$W/pebble.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
  "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >"$W/pebble.ext"
openssl x509 -req -days 30 -in "$W/pebble.csr" -CA "$W/listener-ca.pem" -CAkey "$W/listener-ca.key" \
  -CAcreateserial -extfile "$W/pebble.ext" -out "$W/pebble-cert.pem" 2>/dev/null
cat >"$W/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME_PORT", "managementListenAddress": "127.0.0.1:$MGMT_PORT",
  "certificate": "$W/pebble-cert.pem", "privateKey": "$W/pebble-key.pem",
  "httpPort": $HTTP_PORT, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON

say "starting pebble-challtestsrv (DNS: every name is 127.0.0.1) and pebble"
"$CHALLTESTSRV_BIN" "${dns_args[@]}" -http01 "" -https01 "" -tlsalpn01 "" \
  -management "127.0.0.1:$CHALL_PORT" -defaultIPv4 127.0.0.1 -defaultIPv6 "" >"$W/logs/challtestsrv.log" 2>&1 &
pids+=($!)
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
  "$PEBBLE_BIN" -config "$W/pebble.json" -dnsserver "127.0.0.1:$DNS_PORT" -strict=false >"$W/logs/pebble.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS --cacert "$W/listener-ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS --cacert "$W/listener-ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null || die "pebble did not start: $W/logs/pebble.log"
curl -fsS --cacert "$W/listener-ca.pem" -o "$W/issuer-root.pem" "https://127.0.0.1:$MGMT_PORT/roots/0"

say "starting haproxy-acme (it writes the default certificate, then waits for HAProxy)"
export DOMAINS EMAIL=demo@example.test ACME_DIRECTORY="https://127.0.0.1:$ACME_PORT/dir" \
  ACME_CA_BUNDLE="$W/listener-ca.pem" DATA_DIR="$W/data" CERTS_DIR="$W/certs" \
  HAPROXY_RUNTIME_API="unix:$W/haproxy-admin.sock" RESPONDER_LISTEN="127.0.0.1:$RESPONDER_PORT" \
  PREFLIGHT_HTTP_ADDRESS="127.0.0.1:$HTTP_PORT"
start=$(date +%s%N)
"$BIN" run >"$W/logs/haproxy-acme.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$W/certs/000-default.pem" ] && break; sleep 0.05; done

say "starting HAProxy from deploy/haproxy.cfg (master-worker, runtime API)"
export HAPROXY_HTTP_BIND="127.0.0.1:$HTTP_PORT" HAPROXY_HTTPS_BIND="127.0.0.1:$HTTPS_PORT" \
  HAPROXY_RUNTIME_SOCKET="$W/haproxy-admin.sock" ACME_RESPONDER="127.0.0.1:$RESPONDER_PORT" APP_BACKEND="127.0.0.1:9"
haproxy -c -q -f deploy/haproxy.cfg
haproxy -W -S "$W/haproxy-master.sock,mode,600" -f deploy/haproxy.cfg >"$W/logs/haproxy.log" 2>&1 &
pids+=($!)

names=$(printf '%s' "$DOMAINS" | tr ';,' '\n\n' | tr -d ' ' | grep -v '^$')
served() {
  echo | openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$1" -verify_hostname "$1" \
    -verify_return_error -CAfile "$W/issuer-root.pem" 2>/dev/null | grep -q 'Verify return code: 0 (ok)'
}
say "waiting until HAProxy serves a valid certificate for every name"
for _ in $(seq 600); do
  ok=1; for n in $names; do served "$n" || { ok=0; break; }; done
  [ $ok = 1 ] && break; sleep 0.1
done
[ $ok = 1 ] || { tail -n 30 "$W/logs/haproxy-acme.log" >&2; die "not served after 60 s (logs in $W/logs)"; }
end=$(date +%s%N)
reloads=$(echo "show proc" | socat "$W/haproxy-master.sock" - | awk '$2=="master"{print $3}')
printf 'all names served %d ms after the daemon started; HAProxy reloads: %s\n' \
  $(((end - start) / 1000000)) "$reloads"
for n in $names; do
  say "served for $n"
  echo | openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$n" -CAfile "$W/issuer-root.pem" 2>/dev/null \
    | openssl x509 -noout -subject -issuer -serial -enddate -ext subjectAltName
done
say "haproxy-acme state dump"
"$BIN" state dump
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  say "running; logs in $W/logs. Ctrl-C stops everything."
  wait
fi
