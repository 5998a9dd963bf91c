#!/usr/bin/env bash
# Installs what the tests and the local demo run, from Debian's packages, when missing:
# pebble (+ pebble-challtestsrv), haproxy, openssl, curl, socat, systemd (systemd-analyze),
# dig and nsupdate (dnsutils: tests/dns_hook.rs asks pebble's DNS for TXT records), BIND 9's
# named (bind9: tests/dns_rfc2136.rs starts its own on a loopback port), certbot (the `import certbot` test imports what a real certbot run produced), prometheus (its
# promtool checks and unit-tests deploy/prometheus-rules.yml), Docker's engine and docker-compose
# (tests/compose.rs runs deploy/docker-compose.yml), debootstrap (scripts/docker-images.sh builds
# the images from Debian's packages), the PostgreSQL server (postgresql: tests/common/pg.rs runs
# initdb and postgres from /usr/lib/postgresql/<ver>/bin for a private cluster on a loopback port).
# Needs root (or sudo) for apt-get.
# The Debian haproxy, prometheus, bind9 and postgresql packages' own system services are never used;
# if the install started them, they are stopped (and disabled) so that they hold no ports: the system
# PostgreSQL cluster (5432) is never the tests'.
# Then HAProxy 3.2 and pebble 2.10 from Debian's newer suites into LAB_DIR
# [/var/cache/haproxy-acme-lab] (scripts/lab.sh: private apt configuration, nothing installed;
# kept once there), for the tests scripts/test.sh runs against them.
set -euo pipefail
LAB_DIR=${LAB_DIR:-/var/cache/haproxy-acme-lab}
lab() {
  local as=""
  [ -w "$LAB_DIR" ] || [ -w "$(dirname "$LAB_DIR")" ] || as=$sudo
  $as bash "$(dirname "$0")/lab.sh" "$LAB_DIR" pebble haproxy 3.2
}

need=()
for pair in dig:dnsutils pebble:pebble pebble-challtestsrv:pebble haproxy:haproxy openssl:openssl curl:curl socat:socat systemd-analyze:systemd certbot:certbot promtool:prometheus docker:docker.io docker-compose:docker-compose debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# named is in /usr/sbin, often not on a user's PATH.
[ -x /usr/sbin/named ] || command -v named >/dev/null 2>&1 || need+=(bind9)
# The PostgreSQL server's programs are not on PATH either (Debian: /usr/lib/postgresql/<ver>/bin).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
start_docker() {
  docker info >/dev/null 2>&1 && return 0
  echo "starting Docker's engine" >&2
  if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then :
  else $sudo service docker start >&2 || true; fi
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "Docker's engine does not answer (docker info): start it (systemctl start docker)" >&2
  return 1
}
if [ ${#need[@]} -eq 0 ]; then
  start_docker
  lab
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing from Debian: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >&2
for service in haproxy prometheus named; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl disable --now "$service" >&2 || true
  fi
done
# When this run installed the PostgreSQL server (one that was here before is left alone), the
# cluster its install created and started (Debian's 'main', 5432) is stopped: the service is
# disabled under systemd, and without systemd (its init script started it) every cluster that runs
# is stopped.
if [[ " ${need[*]} " == *" postgresql "* ]]; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    $sudo systemctl disable --now postgresql >&2 || true
  fi
  if command -v pg_lsclusters >/dev/null 2>&1; then
    { pg_lsclusters --no-header 2>/dev/null || true; } | while read -r version cluster _port status _rest; do
      if [[ "$status" == online* ]]; then
        echo "stopping the system PostgreSQL cluster $version/$cluster (the tests start their own)" >&2
        $sudo pg_ctlcluster "$version" "$cluster" stop >&2 || true
      fi
    done
  fi
fi
start_docker
lab
