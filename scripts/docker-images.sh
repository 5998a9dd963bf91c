#!/usr/bin/env bash
# Builds, into the local Docker engine, stand-ins for the public images that deploy/Dockerfile and
# deploy/docker-compose.yml use, from Debian's packages only (no registry is reachable here):
#
#   debian:bookworm-slim       debootstrap --variant=minbase, trimmed like the official slim image
#   haproxy:3.2                Debian's haproxy 3.2 (from sid) on trixie, laid out like docker-library's
#                              haproxy:3.2
#   nginx:stable               Debian's nginx, serving its default page on :80 (the compose "app")
#   haproxy-acme-test/pebble   Debian sid's pebble 2.10 (ENTRYPOINT /usr/bin/pebble; mount a config)
#
# Each image is built only when it is missing or its recipe changed: the label
# org.haproxy-acme.recipe holds a hash of this script's text and of the image's inputs (the base
# rootfs and the exact .deb files it is made of); a run whose labels all match builds nothing.
# The debootstrap'd rootfs, the updated+trimmed base rootfs and the .debs are kept under
# /var/cache/haproxy-acme-images/ (HAPROXY_ACME_IMAGES_CACHE), so a second run takes seconds.
# Delete that directory to start over from a new debootstrap.
#
# How: the package work is done on the host, never inside a container (containers need no
# network). apt resolves and downloads on the host, against the rootfs's own dpkg status and a
# private copy of the suite's package lists (refreshed when older than a day,
# HAPROXY_ACME_IMAGES_APT_MAX_AGE minutes); dpkg installs those files in a chroot of a copy of
# the rootfs; the result is `docker import`ed (one layer per image, config by --change, and
# STOPSIGNAL, which this engine's import refuses, by a build of FROM + STOPSIGNAL). Two bases:
# bookworm (debian:bookworm-slim, nginx) and trixie (haproxy:3.2, as upstream's 3.2 is
# built on trixie-slim; pebble 2.10 from sid), each updated from its -updates and -security like
# the official images.
#
# Needs root (re-runs itself with sudo), a running Docker engine, and Debian's mirror from the
# host (the host's own mirror for bookworm is used; DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR
# override). Installs debootstrap from Debian when missing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
SCRIPT_SHA="$(sha256sum "$SELF" | cut -c1-64)"
SUITE=bookworm # the suite being worked on (use_suite)
CACHE="${HAPROXY_ACME_IMAGES_CACHE:-/var/cache/haproxy-acme-images}"
APT_MAX_AGE="${HAPROXY_ACME_IMAGES_APT_MAX_AGE:-1440}"
LABEL=org.haproxy-acme.recipe
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ARCH="$(dpkg --print-architecture)"
DEBS="$CACHE/debs"

log() { printf '[docker-images %3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }
sha() { sha256sum | cut -c1-64; }

# ---------------------------------------------------------------------------------------------
# Host set-up: tools, lock, work directory, mirrors, private apt state.

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"
if ! command -v debootstrap >/dev/null 2>&1 || [ ! -s /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  log "installing debootstrap from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >&2
fi

mkdir -p "$CACHE" "$DEBS/partial"
exec 9>"$CACHE/.lock"
flock 9 # one run at a time per cache
# The long output (debootstrap, apt, dpkg) goes to this file, shown when a step fails.
LOG="$CACHE/last-run.log"
: >"$LOG"
failed() { tail -n 40 "$LOG" >&2; die "$1 failed (whole output: $LOG)"; }

# Work directories of runs that were killed (none can be running: the lock is ours).
find "$CACHE" -mindepth 1 -maxdepth 1 -name 'work.*' -exec rm -rf --one-file-system {} +
WORK="$(mktemp -d "$CACHE/work.XXXXXX")"
# The chroots' /proc mounts live in private mount namespaces (see in_chroot), so nothing is ever
# mounted under $WORK in this namespace; --one-file-system is a second guard.
trap 'rm -rf --one-file-system "$WORK"' EXIT

# The host's mirrors for bookworm (as `apt-get update` on the host would use them), for every
# suite.
# shellcheck disable=SC2016 # apt's format, not the shell's
host_targets="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(IDENTIFIER)' 2>/dev/null || true)"
mirror_for() { awk -v r="$1" '$2 == r && $3 == "main" && $4 == "Packages" { print $1; exit }' <<<"$host_targets"; }
MIRROR="${DEBIAN_MIRROR:-$(mirror_for "$SUITE")}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(mirror_for "$SUITE-security")}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"

# use_suite SUITE [EXTRA]: apt on the host with its own sources, lists and configuration for
# SUITE (+ SUITE-updates, SUITE-security), under $CACHE/apt-SUITE (the host's apt.conf.d hooks
# and pins do not apply; its proxy settings do). EXTRA (a newer suite) is listed too, pinned to
# 100: nothing comes from it unless a recipe names it (PACKAGE/EXTRA) or a dependency of such a
# package needs a version only it has. Dir::State::status is given per call: the status of the
# rootfs being resolved for. Sets SUITE, APTDIR and APT_CONFIG; updates the lists when they
# are older than APT_MAX_AGE or the sources changed.
use_suite() {
  SUITE="$1"
  local extra="${2:-}" sources_sha
  APTDIR="$CACHE/apt-$SUITE"
  mkdir -p "$APTDIR/lists/partial" "$APTDIR/sources.list.d" "$APTDIR/apt.conf.d" "$APTDIR/preferences.d"
  : >"$APTDIR/sources.list"
  : >"$APTDIR/preferences"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$MIRROR" "$SUITE" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
    printf 'Types: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$SECURITY_MIRROR" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$extra" ]; then
      # Signed as the others, but not refused once its Release's Valid-Until (a week after it
      # was made, for sid) has passed: mirrors that lag or are snapshots serve such a Release.
      printf '\nTypes: deb\nURIs: %s\nSuites: %s\nComponents: main\n' "$MIRROR" "$extra"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\nCheck-Valid-Until: no\n'
    fi
  } >"$APTDIR/sources.list.d/debian.sources"
  if [ -n "$extra" ]; then
    printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$extra" >"$APTDIR/preferences"
  fi
  {
    printf 'Dir::Etc::sourcelist "%s";\n' "$APTDIR/sources.list"
    printf 'Dir::Etc::sourceparts "%s";\n' "$APTDIR/sources.list.d"
    printf 'Dir::Etc::parts "%s";\n' "$APTDIR/apt.conf.d"
    printf 'Dir::Etc::preferences "%s";\n' "$APTDIR/preferences"
    printf 'Dir::Etc::preferencesparts "%s";\n' "$APTDIR/preferences.d"
    printf 'Dir::State::lists "%s";\n' "$APTDIR/lists"
    printf 'Dir::Cache::archives "%s";\n' "$DEBS"
    printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    printf 'APT::Architecture "%s";\nAPT::Architectures { "%s"; };\n' "$ARCH" "$ARCH"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
    printf 'Acquire::Languages "none";\nDebug::NoLocking "true";\n'
    apt-config dump 2>/dev/null | grep -E '^Acquire::[a-z]+::Proxy' || true
  } >"$APTDIR/apt.conf"
  export APT_CONFIG="$APTDIR/apt.conf"
  sources_sha="$({ cat "$APTDIR/sources.list.d/debian.sources" "$APTDIR/preferences"; } | sha)"
  if [ "$(cat "$APTDIR/updated" 2>/dev/null)" != "$sources_sha" ] \
    || [ -z "$(find "$APTDIR/updated" -mmin "-$APT_MAX_AGE" 2>/dev/null)" ]; then
    apt_update
  fi
}

apt_update() {
  log "apt-get update for $SUITE (private lists: $MIRROR, $SECURITY_MIRROR)"
  rm -rf "$APTDIR/resolved"
  if ! apt-get -q --error-on=any update >>"$LOG" 2>&1; then
    # Lists from an earlier run are still good enough to find out that nothing changed.
    [ -n "$(find "$APTDIR/lists" -name '*Packages*' -print -quit)" ] || failed "apt-get update"
    log "warning: apt-get update failed; using the lists of an earlier run"
    return 0
  fi
  { cat "$APTDIR/sources.list.d/debian.sources" "$APTDIR/preferences"; } | sha >"$APTDIR/updated"
}

# resolve STATUS APT-ARGS...: the .deb file names (as stored in $DEBS) that `apt-get APT-ARGS`
# would install on a system whose dpkg status is STATUS, one a line, sorted. Remembered until
# the lists are next updated (a run that builds nothing then calls apt not at all).
resolve() {
  local status="$1" empty key
  shift
  key="$({ cat "$APTDIR/updated"; stat -c %Y "$APTDIR/updated"; sha <"$status"; echo "$*"; } | sha)"
  if [ -f "$APTDIR/resolved/$key" ]; then
    cat "$APTDIR/resolved/$key"
    return 0
  fi
  empty="$(mktemp -d "$WORK/uris.XXXXXX")"
  mkdir -p "$empty/partial" "$APTDIR/resolved"
  apt-get -qq -y -o Dir::State::status="$status" -o Dir::State::extended_states="$empty/ext" \
    -o Dir::Cache::archives="$empty" --print-uris "$@" | awk -F"'" 'NF >= 3 { print $3 }' \
    | awk '{ print $1 }' | sort >"$empty/list"
  mv "$empty/list" "$APTDIR/resolved/$key"
  cat "$APTDIR/resolved/$key"
}

# fetch STATUS APT-ARGS...: downloads those files into $DEBS (kept there between runs).
fetch() {
  local status="$1"
  shift
  apt-get -q -y -o Dir::State::status="$status" -o Dir::State::extended_states="$WORK/ext" \
    --download-only "$@" >>"$LOG" 2>&1
}

# in_chroot ROOT CMD...: runs CMD in ROOT with /proc mounted in a private mount namespace (gone
# when CMD ends), a clean environment, and no network use (nothing in here downloads).
in_chroot() {
  local root="$1"
  shift
  # shellcheck disable=SC2016 # expanded by the inner sh
  unshare --mount --propagation private -- \
    env -i PATH="$IMAGE_PATH" HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive \
    DEBCONF_NONINTERACTIVE_SEEN=true \
    sh -c 'mount -t proc proc "$1/proc" && root="$1" && shift && exec chroot "$root" "$@"' \
    sh "$root" "$@"
}

# install_debs ROOT STATUS LISTFILE APT-ARGS...: fetches the files named in LISTFILE (the
# resolution of APT-ARGS against STATUS) and has apt install them in ROOT from local files.
install_debs() {
  local root="$1" status="$2" list="$3" f
  shift 3
  [ -s "$list" ] || return 0
  if ! fetch "$status" "$@"; then
    # Lists up to a day old can name files the mirror has since replaced: update them and start
    # again (once), since what is to be installed, and so the recipe hashes, may have changed.
    [ -z "${HAPROXY_ACME_IMAGES_RETRY:-}" ] || die "apt could not download the packages"
    apt_update
    log "starting again with the new lists"
    rm -rf --one-file-system "$WORK"
    HAPROXY_ACME_IMAGES_RETRY=1 exec bash "$SELF"
  fi
  mkdir -p "$root/tmp/debs"
  while read -r f; do
    [ -f "$DEBS/$f" ] || die "apt did not download $f"
    cp "$DEBS/$f" "$root/tmp/debs/"
  done <"$list"
  chmod -R a+rX "$root/tmp/debs"
  # A configuration file a PREPARE step wrote before its package is installed is kept (the
  # package's version goes to FILE.dpkg-dist; no prompt).
  in_chroot "$root" sh -c 'apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /tmp/debs/*.deb' \
    >>"$LOG" 2>&1 || failed "apt-get install in the chroot"
  rm -rf "$root/tmp/debs"
}

# Removes what the official images do not carry: package caches and lists, logs with build
# times, the host's network identity.
clean_rootfs() {
  local root="$1"
  find "$root/var/lib/apt/lists" "$root/var/cache/apt/archives" -mindepth 1 -maxdepth 1 \
    -not -name partial -exec rm -rf {} +
  find "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial" -mindepth 1 -delete
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/log/apt/* "$root"/var/log/dpkg.log \
    "$root"/var/log/alternatives.log "$root"/var/log/bootstrap.log \
    "$root"/var/cache/ldconfig/aux-cache "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/tmp/* "$root"/root/.bash_history
  echo localhost >"$root/etc/hostname"
  printf 'nameserver 1.1.1.1\nnameserver 1.0.0.1\n' >"$root/etc/resolv.conf" # Docker mounts its own
  rm -f "$root/etc/machine-id"
}

image_label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

# import ROOT REF HASH CONFIG...: the rootfs as a one-layer image REF labelled HASH, with the
# Dockerfile instructions CONFIG... as its config. This engine's `docker import --change` refuses
# STOPSIGNAL: that one is applied by a build of "FROM the import" + STOPSIGNAL (no layer added).
# The image REF had before is removed when no container uses it.
import_image() {
  local root="$1" ref="$2" hash="$3" old new c target stopsignal=""
  shift 3
  local changes=(--change "ENV PATH=$IMAGE_PATH" --change "LABEL $LABEL=$hash")
  for c in "$@"; do
    case "$c" in
      STOPSIGNAL\ *) stopsignal="$c" ;;
      *) changes+=(--change "$c") ;;
    esac
  done
  old="$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)"
  target="$ref"
  [ -z "$stopsignal" ] || target="haproxy-acme-images/import:${hash:0:16}"
  new="$(tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | docker import "${changes[@]}" - "$target")"
  if [ -n "$stopsignal" ]; then
    mkdir -p "$WORK/context"
    printf 'FROM %s\n%s\n' "$target" "$stopsignal" >"$WORK/Dockerfile"
    # (stderr to a file: the legacy builder warns that it is deprecated)
    new="$(DOCKER_BUILDKIT=0 docker build -q -t "$ref" -f "$WORK/Dockerfile" "$WORK/context" 2>"$WORK/build.err")" \
      || { cat "$WORK/build.err" >&2; die "docker build of $ref failed"; }
    docker image rm "$target" >/dev/null # only the tag: the layer is $ref's
  fi
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  log "$ref: built ${new#sha256:}"
}

# ---------------------------------------------------------------------------------------------
# The rootfs. Level 0: debootstrap, untouched (cached by its arguments). Level 1: updated from
# bookworm-updates/-security, apt and dpkg configured and trimmed like the official slim image
# (cached by its hash, which is also the debian:bookworm-slim image's recipe hash).

debootstrap_rootfs() {
  local root="$1"
  # In a private mount namespace: nothing debootstrap mounts can outlive it.
  unshare --mount --propagation private -- debootstrap --variant=minbase --arch="$ARCH" --merged-usr \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$root" "$MIRROR" >>"$LOG" 2>&1 \
    || failed debootstrap
}

# The apt/dpkg configuration that docker's and debuerreotype's images carry (services never
# start during installs; no apt caches, no translations, compressed lists; dpkg does not fsync).
minimize_config() {
  local root="$1"
  printf '#!/bin/sh\n# Services do not start during package installs in an image.\nexit 101\n' \
    >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  printf '# Image builds are thrown away on failure: no fsync per file.\nforce-unsafe-io\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  printf '# Remove suggested packages along with what pulled them in.\nApt::AutoRemove::SuggestsImportant "false";\n' \
    >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<EOF
# No package cache kept in image layers ("apt-get clean" after every install and update).
DPkg::Post-Invoke { $clean };
APT::Update::Post-Invoke { $clean };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf '# Lists stay compressed on disk.\nAcquire::GzipIndexes "true";\n' \
    >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf '# No translation files.\nAcquire::Languages "none";\n' \
    >"$root/etc/apt/apt.conf.d/docker-no-languages"
  chmod 0644 "$root"/etc/dpkg/dpkg.cfg.d/docker-apt-speedup "$root"/etc/apt/apt.conf.d/docker-*
  rm -f "$root/etc/apt/sources.list"
  local keyring=/usr/share/keyrings/debian-archive-keyring.pgp # trixie on
  [ -e "$root$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: $keyring
EOF
  chmod 0644 "$root/etc/apt/sources.list.d/debian.sources"
}

# The slim variant: documentation, manuals and translations removed, and dpkg told not to
# install them again (copyright files and locale.alias stay), as the official slim images do.
SLIM_EXCLUDES=(/usr/share/doc /usr/share/info /usr/share/linda /usr/share/lintian/overrides
  /usr/share/locale /usr/share/man /usr/share/doc/kde/HTML /usr/share/gnome/help /usr/share/omf)
SLIM_INCLUDES=('/usr/share/doc/*/copyright' '/usr/share/doc/kde/HTML/C/*' '/usr/share/gnome/help/*/C/*'
  /usr/share/locale/all_languages '/usr/share/locale/currency/*' '/usr/share/locale/l10n/*'
  /usr/share/locale/languages /usr/share/locale/locale.alias '/usr/share/omf/*/*-C.emf')
slimify() {
  local root="$1" dir p keep=()
  for p in "${SLIM_INCLUDES[@]}"; do
    [ ${#keep[@]} -eq 0 ] || keep+=(-o)
    keep+=(-path "$p")
  done
  {
    echo '# The "slim" variant: files normally useless in containers are not installed.'
    for dir in "${SLIM_EXCLUDES[@]}"; do echo "path-exclude $dir/*"; done
    for p in "${SLIM_INCLUDES[@]}"; do echo "path-include $p"; done
  } >"$root/etc/dpkg/dpkg.cfg.d/docker"
  chmod 0644 "$root/etc/dpkg/dpkg.cfg.d/docker"
  for dir in "${SLIM_EXCLUDES[@]}"; do
    [ -d "$root$dir" ] || continue
    # In the chroot, so that absolute symlinks resolve there.
    in_chroot "$root" find "$dir" -mindepth 1 -not -type d -not -type l -not \( "${keep[@]}" \) -delete
    # Then empty directories and dangling symlinks, until none is left.
    while [ "$(in_chroot "$root" find "$dir" -mindepth 1 \( -empty -o -xtype l \) -print -delete | wc -l)" -gt 0 ]; do :; done
  done
  mkdir -p "$root"/usr/share/man/man{1..8} # some postinsts expect these
}

# ensure_base: sets BASE_TAR, BASE_STATUS and BASE_HASH (level 1) for SUITE, building what is
# missing.
ensure_base() {
  local l0_key l0_tar l0_sha list root
  l0_key="$(printf '%s\n' "$SUITE $ARCH $MIRROR" "$(declare -f debootstrap_rootfs)" | sha | cut -c1-16)"
  l0_tar="$CACHE/debootstrap-$SUITE-$l0_key.tar"
  if [ ! -s "$l0_tar" ] || [ ! -s "$l0_tar.status" ] || [ ! -s "$l0_tar.sha256" ]; then
    log "debootstrap --variant=minbase $SUITE from $MIRROR"
    root="$WORK/debootstrap"
    debootstrap_rootfs "$root"
    rm -f "$root"/var/cache/apt/archives/*.deb
    tar --numeric-owner -C "$root" -cf "$l0_tar.new" .
    cp "$root/var/lib/dpkg/status" "$l0_tar.status"
    sha <"$l0_tar.new" >"$l0_tar.sha256"
    mv "$l0_tar.new" "$l0_tar"
    rm -rf --one-file-system "$root"
  fi
  l0_sha="$(cat "$l0_tar.sha256")"

  list="$WORK/base-$SUITE.debs"
  resolve "$l0_tar.status" dist-upgrade >"$list"
  BASE_HASH="$(printf '%s\n' "$SCRIPT_SHA" base "$l0_sha" | cat - "$list" | sha)"
  BASE_TAR="$CACHE/slim-$SUITE-${BASE_HASH:0:16}.tar"
  BASE_STATUS="$BASE_TAR.status"
  USED_DEBS+=("$list")
  KEEP+=("$(basename "$l0_tar")" "$(basename "$BASE_TAR")")
  if [ -s "$BASE_TAR" ] && [ -s "$BASE_STATUS" ]; then
    return 0
  fi
  log "base rootfs: $(wc -l <"$list") updates, minimizing, slimming"
  root="$WORK/base"
  mkdir "$root"
  tar --numeric-owner -xpf "$l0_tar" -C "$root"
  minimize_config "$root"
  slimify "$root"
  install_debs "$root" "$l0_tar.status" "$list" dist-upgrade
  in_chroot "$root" apt-mark auto '.*' >/dev/null # like the official image: nothing "manual"
  clean_rootfs "$root"
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.new" .
  cp "$root/var/lib/dpkg/status" "$BASE_STATUS"
  mv "$BASE_TAR.new" "$BASE_TAR"
  rm -rf --one-file-system "$root"
}

# ---------------------------------------------------------------------------------------------
# The images.

# build REF PACKAGES PREPARE FINISH CHANGE...: REF = the base rootfs + PACKAGES (space-separated,
# with their dependencies), PREPARE ROOT run before the install and FINISH ROOT after (shell
# functions or :), CHANGE... its config.
build() {
  local ref="$1" packages="$2" prepare="$3" finish="$4" list hash root deps
  shift 4
  list="$WORK/$(tr -c 'a-z0-9\n' _ <<<"$ref").debs"
  # shellcheck disable=SC2086 # PACKAGES is a word list
  resolve "$BASE_STATUS" install $packages >"$list"
  USED_DEBS+=("$list")
  hash="$(printf '%s\n' "$SCRIPT_SHA" "$ref" "$BASE_HASH" "$packages" | cat - "$list" | sha)"
  if [ "$(image_label "$ref")" = "$hash" ]; then
    log "$ref: up to date"
    return 0
  fi
  log "$ref: building ($packages: $(wc -l <"$list") packages)"
  root="$WORK/rootfs"
  mkdir "$root"
  tar --numeric-owner -xpf "$BASE_TAR" -C "$root"
  "$prepare" "$root"
  # shellcheck disable=SC2086
  install_debs "$root" "$BASE_STATUS" "$list" install $packages
  # Installed from files, everything is "manual": only PACKAGES are (apt-mark showmanual).
  mapfile -t deps < <(sed 's/_.*//' "$list" | grep -vxF -f <(tr ' ' '\n' <<<"$packages" | sed 's|/.*||') || true)
  [ ${#deps[@]} -eq 0 ] || in_chroot "$root" apt-mark auto "${deps[@]}" >/dev/null
  "$finish" "$root"
  clean_rootfs "$root"
  import_image "$root" "$ref" "$hash" "$@"
  rm -rf --one-file-system "$root"
}

# haproxy:3.2, after docker-library/haproxy's 3.2/Dockerfile and docker-entrypoint.sh. The same:
# the base is Debian trixie (upstream: FROM debian:trixie-slim), slim and updated from
# trixie-updates/-security; user and group haproxy, uid/gid 99, home /var/lib/haproxy (owned by
# it), made before HAProxy is installed; the binary at /usr/local/sbin/haproxy;
# /usr/local/etc/haproxy/ (with errors/); ca-certificates; STOPSIGNAL SIGUSR1; USER haproxy;
# WORKDIR /var/lib/haproxy (docker-library/haproxy#200, 2.7 and later); the entrypoint's rules (a
# first argument starting with "-" means haproxy; haproxy runs with -W -db); ENTRYPOINT and CMD.
# Different:
# - HAProxy is Debian's 3.2.x from unstable (sid), with Debian's patches and build options (Lua
#   5.4, PCRE2 JIT, OpenSSL 3.5, Prometheus exporter, like upstream's; also QUIC, OpenTracing
#   and jemalloc, which upstream's does not build), not 3.2.x built from haproxy.org's source; it
#   is dynamically linked against Debian's libraries, and /usr/local/sbin/haproxy is a symlink
#   to /usr/sbin/haproxy. Debian's package also brings /etc/haproxy/ (its own haproxy.cfg,
#   unused here), halog, init script and systemd unit (never started), and adduser's and its
#   libraries' dependencies (a larger image than upstream's).
# - Why trixie + sid's haproxy, not a sid rootfs: trixie (3.0.11) has no 3.2 and trixie-backports
#   none either; trixie is upstream's base, and a stable one: its rootfs (and so the cached base
#   and this image's recipe hash) changes with point releases and security updates only, where a
#   sid rootfs would change, and be rebuilt, every day. sid is listed in this suite's private apt
#   sources at pin 100, so only haproxy itself (named haproxy/sid) and what its dependencies need
#   newer than trixie has come from sid: today libpcre2-8-0 (haproxy 3.2.26-1 wants >= 10.47,
#   trixie has 10.46); glibc, OpenSSL 3.5, Lua are trixie's, as the package's dependencies allow
#   (`haproxy -vv` says it was built with sid's OpenSSL 3.6 and runs on 3.5: "VERSIONS DIFFER!",
#   harmless within OpenSSL 3; upstream's image builds on and runs with trixie's 3.5).
# - /etc/adduser.conf has FIRST_SYSTEM_UID/GID=99: Debian's haproxy postinst runs
#   `adduser --system haproxy`, which refuses an existing user below FIRST_SYSTEM_UID (100) as
#   "not a system user" and fails the install; kept so the package can be reinstalled. (trixie's
#   minbase has no adduser: these lines are written before it is installed, and appended to its
#   own adduser.conf after.)
# - No socat (upstream's has none either; the 2.6 stand-in this replaced had it).
# - One layer, no HAPROXY_VERSION/HAPROXY_URL/HAPROXY_SHA256 variables.
haproxy_prepare() {
  local root="$1"
  in_chroot "$root" sh -ec '
    groupadd --gid 99 --system haproxy
    useradd --gid haproxy --home-dir /var/lib/haproxy --no-create-home --system --uid 99 haproxy
    mkdir -p /var/lib/haproxy
    chown haproxy:haproxy /var/lib/haproxy'
  printf '%s\n' '' '# haproxy:3.2 stand-in: the haproxy user is uid/gid 99 (as in the official image);' \
    '# adduser --system (haproxy'\''s postinst) accepts it only from this range on.' \
    'FIRST_SYSTEM_UID=99' 'FIRST_SYSTEM_GID=99' >>"$root/etc/adduser.conf"
  cp "$root/etc/adduser.conf" "$WORK/adduser.conf.ours"
}
haproxy_finish() {
  local root="$1"
  if [ -e "$root/etc/adduser.conf.dpkg-dist" ]; then # adduser came with haproxy: its file + ours
    cat "$root/etc/adduser.conf.dpkg-dist" "$WORK/adduser.conf.ours" >"$root/etc/adduser.conf"
    rm "$root/etc/adduser.conf.dpkg-dist"
  fi
  ln -s /usr/sbin/haproxy "$root/usr/local/sbin/haproxy"
  mkdir -p "$root/usr/local/etc/haproxy"
  cp -a "$root/etc/haproxy/errors" "$root/usr/local/etc/haproxy/errors"
  cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# The official haproxy image's entrypoint rules: options alone run haproxy with them, and
# haproxy always runs in master-worker mode (-W: reload on SIGUSR2) in the foreground (-db).
set -e
case "${1:-}" in
  -*) set -- haproxy "$@" ;;
esac
if [ "${1:-}" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
EOF
  chmod 0755 "$root/usr/local/bin/docker-entrypoint.sh"
  in_chroot "$root" haproxy -v >/dev/null # smoke test, as upstream's build does
}

# nginx:stable: Debian's nginx with its default site (/var/www/html, :80 and [::]:80). Like the
# official image: logs to the container's stdout/stderr, EXPOSE 80, STOPSIGNAL SIGQUIT (graceful
# stop), CMD nginx -g 'daemon off;'. Not like it: no /docker-entrypoint.sh (templates,
# /docker-entrypoint.d), Debian's /etc/nginx layout, nginx 1.22.
nginx_finish() {
  local root="$1"
  ln -sf /dev/stdout "$root/var/log/nginx/access.log"
  ln -sf /dev/stderr "$root/var/log/nginx/error.log"
  in_chroot "$root" nginx -t -q
}

# haproxy-acme-test/pebble: Debian unstable's pebble 2.10 (and pebble-challtestsrv, same
# package), the CA the rest of the suite runs (renewal information, profiles), on trixie: Go
# binaries needing only libc. Nothing else, no configuration or certificate baked in: mount a
# config and pass -config.
pebble_finish() { in_chroot "$1" test -x /usr/bin/pebble; }

USED_DEBS=()
KEEP=() # the cached rootfs tars in use
use_suite bookworm
ensure_base
if [ "$(image_label debian:bookworm-slim)" = "$BASE_HASH" ]; then
  log "debian:bookworm-slim: up to date"
else
  log "debian:bookworm-slim: importing"
  base_root="$WORK/base-image"
  mkdir "$base_root"
  tar --numeric-owner -xpf "$BASE_TAR" -C "$base_root"
  import_image "$base_root" debian:bookworm-slim "$BASE_HASH" 'CMD ["bash"]'
  rm -rf --one-file-system "$base_root"
fi
build nginx:stable nginx : nginx_finish \
  'EXPOSE 80' 'STOPSIGNAL SIGQUIT' 'CMD ["nginx", "-g", "daemon off;"]'

use_suite trixie sid
ensure_base
build haproxy-acme-test/pebble pebble/sid : pebble_finish \
  'EXPOSE 14000 15000' 'ENTRYPOINT ["/usr/bin/pebble"]'
build haproxy:3.2 "haproxy/sid ca-certificates" haproxy_prepare haproxy_finish \
  'STOPSIGNAL SIGUSR1' 'ENTRYPOINT ["docker-entrypoint.sh"]' 'USER haproxy' \
  'WORKDIR /var/lib/haproxy' 'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'

# Images earlier versions of this script built and nothing uses any more (only when they carry
# this script's label and no container uses them).
for ref in haproxy:2.6; do
  [ -z "$(image_label "$ref")" ] || docker image rm "$ref" >/dev/null 2>&1 || true
done
# Cache files of earlier recipes: other rootfs tars, the single apt directory of before.
find "$CACHE" -maxdepth 1 \( -name 'debootstrap-*' -o -name 'slim-*' \) -printf '%f\n' \
  | while read -r f; do
    keep=0
    for k in "${KEEP[@]}"; do case "$f" in "$k" | "$k".*) keep=1 ;; esac; done
    [ "$keep" = 1 ] || rm -f "$CACHE/$f"
  done
rm -rf "$CACHE/apt"

# Keep only the .debs that the current recipes use.
sort -u "${USED_DEBS[@]}" >"$WORK/used"
find "$DEBS" -maxdepth 1 -name '*.deb' -printf '%f\n' | sort | comm -23 - "$WORK/used" \
  | while read -r f; do rm -f "$DEBS/$f"; done

for ref in debian:bookworm-slim haproxy:3.2 nginx:stable haproxy-acme-test/pebble:latest; do
  docker image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$ref"
done
