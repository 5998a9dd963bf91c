#!/usr/bin/env bash
# lab.sh: newer pebble and HAProxy versions for the tests, from Debian's newer suites, extracted into
# a private directory without installing anything: the system's apt sources, dpkg database and
# libraries are never touched (apt runs with its own configuration, state and cache under DESTDIR/.apt).
#
# Usage: scripts/lab.sh DESTDIR [pebble] [haproxy VERSION...]
#   (no argument after DESTDIR: pebble haproxy 3.0 3.2 3.4)
#   pebble       Debian unstable's pebble package (pebble 2.10, with pebble-challtestsrv): its
#                binaries need only libc, so they run on bookworm's.
#                -> DESTDIR/bin/pebble, DESTDIR/bin/pebble-challtestsrv
#   VERSION      a HAProxy major.minor (3.0, 3.2, 3.4) or a full upstream version (3.2.26): the suite
#                (of LAB_SUITES) with the highest matching package is chosen; haproxy and its library
#                closure (glibc, OpenSSL, Lua, PCRE2, ...) from that suite go to DESTDIR/haproxy-<version>/
#                -> DESTDIR/bin/haproxy-<major.minor>, which runs it through the extracted dynamic
#                loader with the extracted libraries and gives its own path as argv[0] (ld.so --argv0),
#                so a master-worker reload (re-exec of argv[0]) goes through the wrapper again.
# What is already extracted (the wrapper runs) is kept: a second run needs no network.
# The project's default DESTDIR is /var/cache/haproxy-acme-lab (scripts/install-deps.sh, test.sh).
#
# Environment:
#   LAB_MIRROR    archive URI (default: the first "URIs:" of /etc/apt/sources.list.d/debian.sources,
#                 else the first "deb" line of /etc/apt/sources.list)
#   LAB_KEYRING   [/usr/share/keyrings/debian-archive-keyring.gpg]
#   LAB_SUITES    ["bookworm trixie sid experimental"] suites searched for each HAProxy VERSION
#   LAB_OVERLAYS  ["experimental=sid"] suites that carry only a few packages on top of a base suite:
#                 haproxy comes from the overlay, its libraries from the base (as apt's default pin does)
#   LAB_REFRESH   [0] 1: re-download package lists and re-extract even what is there
# Adapted from the team's verified recipe (shared/testenv/haproxy-lab.sh).
set -euo pipefail

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 DESTDIR [pebble] [haproxy VERSION...]"
mkdir -p "$1"
DEST=$(cd "$1" && pwd); shift
[ $# -gt 0 ] || set -- pebble haproxy 3.0 3.2 3.4
want_pebble=0; versions=(); mode=""
for a in "$@"; do
  case $a in
    pebble) want_pebble=1; mode="" ;;
    haproxy) mode=haproxy ;;
    *) [ "$mode" = haproxy ] || die "unexpected argument '$a' (usage: DESTDIR [pebble] [haproxy VERSION...])"
       case $a in *[!0-9.]*|'') die "bad HAProxy VERSION '$a' (expected e.g. 3.2 or 3.2.26)" ;; esac
       versions+=("$a") ;;
  esac
done

# One run at a time per DESTDIR (CI and a developer on the same machine).
exec 9>"$DEST/.lock"
flock 9

ARCH=$(dpkg --print-architecture)
case $ARCH in
  amd64) MA=x86_64-linux-gnu; LDSO=ld-linux-x86-64.so.2 ;;
  arm64) MA=aarch64-linux-gnu; LDSO=ld-linux-aarch64.so.1 ;;
  *) die "architecture $ARCH not supported" ;;
esac
REFRESH=${LAB_REFRESH:-0}
APTDIR=$DEST/.apt
mkdir -p "$DEST/bin"

# A wrapper or binary that runs: what is extracted is kept.
runs() { [ "$REFRESH" != 1 ] && [ -x "$1" ] && "$1" "${@:2}" >/dev/null 2>&1; }

# --- apt with a private configuration, one suite per list ---------------------------------------
mirror() {
  local m=${LAB_MIRROR:-}
  if [ -z "$m" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk 'tolower($1)=="uris:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || die "no archive URI found: set LAB_MIRROR"
  printf '%s\n' "$m"
}
apt_ready=0
apt_init() {
  [ $apt_ready = 1 ] && return 0
  for t in apt-get apt-cache dpkg-deb awk; do command -v "$t" >/dev/null || die "$t not found"; done
  KEYRING=${LAB_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
  [ -r "$KEYRING" ] || die "keyring $KEYRING not readable"
  MIRROR=$(mirror)
  apt_ready=1
}
OVERLAYS=${LAB_OVERLAYS:-experimental=sid}
base_of() { local o; for o in $OVERLAYS; do [ "${o%%=*}" = "$1" ] && { printf '%s\n' "${o#*=}"; return 0; }; done; return 0; }
apt_suite() { # SUITE apt-get|apt-cache ARGS...
  local suite=$1 tool=$2; shift 2
  local d="$APTDIR/$suite"
  "$tool" -q \
    -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
    -o Dir::State="$d/state" -o Dir::State::status="$d/state/status" \
    -o Dir::Cache="$d/cache" -o Dir::Cache::pkgcache=pkgcache.bin -o Dir::Cache::srcpkgcache=srcpkgcache.bin \
    -o APT::Architecture="$ARCH" -o APT::Architectures::="$ARCH" \
    -o Acquire::Languages=none "$@"
}
declare -A prepared=()
prepare_suite() { # SUITE: private sources list + package lists (once per run, kept across runs)
  local suite=$1 d="$APTDIR/$1"
  [ -n "${prepared[$suite]:-}" ] && return 0
  apt_init
  mkdir -p "$d/state/lists/partial" "$d/cache/archives/partial" "$d/debs"
  : >"$d/state/status"
  local line="deb [arch=$ARCH signed-by=$KEYRING target=Packages] $MIRROR $suite main"
  if [ "$REFRESH" = 1 ] || [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")" != "$line" ] \
     || ! ls "$d/state/lists/"*_Packages* >/dev/null 2>&1; then
    printf '%s\n' "$line" >"$d/sources.list"
    log "apt-get update ($suite)"
    apt_suite "$suite" apt-get update >"$d/update.log" 2>&1 \
      || { tail -n 5 "$d/update.log" >&2; die "apt-get update for $suite failed (log: $d/update.log)"; }
  fi
  prepared[$suite]=1
}
upstream() { local v=${1#*:}; printf '%s\n' "${v%-*}"; } # 1:3.2.26-1+b1 -> 3.2.26
candidate() { # SUITE PKG -> version or nothing
  apt_suite "$1" apt-cache show --no-all-versions "$2" 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}
# first alternative of each Depends/Pre-Depends entry of PKG (candidate in SUITE), names only
deps_of() {
  apt_suite "$1" apt-cache show --no-all-versions "$2" 2>/dev/null | awk '
    /^(Depends|Pre-Depends):/ { sub(/^[^:]*:/, ""); n = split($0, a, ",");
      for (i = 1; i <= n; i++) { split(a[i], alt, "|"); s = alt[1]; gsub(/\(.*\)/, "", s);
        gsub(/[[:space:]]/, "", s); sub(/:.*/, "", s); if (s != "") print s } }
    /^$/ { exit }'
}
fetch_deb() { # SUITE PKG -> path of the .deb (downloaded once into DESTDIR/.apt/SUITE/debs)
  local s=$1 p=$2 dl="$APTDIR/$1/debs" cv f
  cv=$(candidate "$s" "$p")
  [ -n "$cv" ] || die "$p has no candidate in $s"
  log "  $p $cv ($s)"
  # apt-get download names the file PKG_VERSION_ARCH.deb, with ':' written %3a
  f=$(ls "$dl/${p}_${cv//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$f" ]; then
    (cd "$dl" && apt_suite "$s" apt-get download "$p=$cv" >>"$dl/download.log" 2>&1) \
      || { tail -n 5 "$dl/download.log" >&2; die "apt-get download $p=$cv failed (log: $dl/download.log)"; }
    f=$(ls "$dl/${p}_${cv//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
  fi
  [ -n "$f" ] || die "downloaded file for $p $cv not found in $dl"
  printf '%s\n' "$f"
}

# --- pebble -------------------------------------------------------------------------------------
if [ $want_pebble = 1 ]; then
  if runs "$DEST/bin/pebble" -h && runs "$DEST/bin/pebble-challtestsrv" -h; then
    log "pebble: kept $(readlink "$DEST/bin/pebble")"
  else
    prepare_suite sid
    v=$(candidate sid pebble); [ -n "$v" ] || die "no pebble in sid"
    root="$DEST/pebble-$(upstream "$v")"
    log "pebble $v from sid"
    deb=$(fetch_deb sid pebble)
    rm -rf "$root.tmp"; mkdir -p "$root.tmp"; dpkg-deb -x "$deb" "$root.tmp"
    rm -rf "$root"; mv "$root.tmp" "$root"
    for b in pebble pebble-challtestsrv; do
      [ -x "$root/usr/bin/$b" ] || die "no usr/bin/$b in the pebble package"
      ln -sfn "$root/usr/bin/$b" "$DEST/bin/$b"
      "$DEST/bin/$b" -h >/dev/null 2>&1 || { "$DEST/bin/$b" -h >&2 || true; die "$DEST/bin/$b does not run"; }
    done
    log "$DEST/bin/pebble -> $root/usr/bin/pebble"
  fi
fi

# --- HAProxy ------------------------------------------------------------------------------------
SUITES=${LAB_SUITES:-bookworm trixie sid experimental}
for want in "${versions[@]}"; do
  mm=$(printf '%s\n' "$want" | cut -d. -f1,2)
  w="$DEST/bin/haproxy-$mm"
  # kept: the wrapper runs and (for a full version) is that version
  if runs "$w" -v; then
    have=$("$w" -v 2>/dev/null | awk 'NR==1 {print $3}')
    case $have in "$want"|"$want".*|"$want"-*) log "haproxy $want: kept $w ($have)"; continue ;; esac
  fi
  best_v=""; best_s=""
  for s in $SUITES; do
    prepare_suite "$s"
    while read -r v; do
      [ -n "$v" ] || continue
      u=$(upstream "$v")
      case $u in "$want"|"$want".*) ;; *) continue ;; esac
      if [ -z "$best_v" ] || dpkg --compare-versions "$v" gt "$best_v"; then best_v=$v; best_s=$s; fi
    done < <(apt_suite "$s" apt-cache madison haproxy 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
  done
  [ -n "$best_v" ] || die "no haproxy $want in suites: $SUITES"
  uv=$(upstream "$best_v")
  log "haproxy $want -> $best_v from $best_s"

  # package closure: haproxy + the shared libraries it needs (lib*, zlib1g), from the same suite
  # (from the base suite when haproxy comes from an overlay such as experimental)
  b=$(base_of "$best_s"); [ -z "$b" ] || prepare_suite "$b"
  pkgs=(haproxy); queue=(haproxy); declare -A seen=([haproxy]=1) from=([haproxy]=$best_s)
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    while read -r d; do
      case $d in lib*|zlib1g) ;; *) continue ;; esac
      [ -n "${seen[$d]:-}" ] && continue
      seen[$d]=1; pkgs+=("$d"); queue+=("$d")
      if [ -n "$b" ] && [ -n "$(candidate "$b" "$d")" ]; then from[$d]=$b; else from[$d]=$best_s; fi
    done < <(deps_of "${from[$p]}" "$p")
  done
  root="$DEST/haproxy-$uv"
  rm -rf "$root.tmp"; mkdir -p "$root.tmp"
  for p in "${pkgs[@]}"; do
    deb=$(fetch_deb "${from[$p]}" "$p")
    dpkg-deb -x "$deb" "$root.tmp"
  done
  unset seen from
  rm -rf "$root"; mv "$root.tmp" "$root"

  # the loader: a regular file inside the root (the /lib64 links are absolute and point outside it)
  ld=$(find "$root" -type f -name "$LDSO" | head -n 1)
  [ -n "$ld" ] || die "no $LDSO in $root"
  [ -x "$root/usr/sbin/haproxy" ] || die "no usr/sbin/haproxy in $root"
  cat >"$w.tmp" <<EOF
#!/bin/sh
# HAProxy $uv (Debian $best_v, suite $best_s) with its own libraries from that suite.
# Written by scripts/lab.sh. argv[0] is this wrapper, so a master-worker reload re-execs through it.
R='$root'
exec "$ld" --library-path "\$R/usr/lib/$MA:\$R/lib/$MA" --argv0 '$w' "\$R/usr/sbin/haproxy" "\$@"
EOF
  chmod 755 "$w.tmp"; mv -f "$w.tmp" "$w"
  "$w" -v >/dev/null 2>&1 || { "$w" -v >&2 || true; die "$w does not run"; }
  log "$w -> $("$w" -v 2>/dev/null | head -n 1)"
done
