#!/usr/bin/env bash
# Installs every Debian package the project needs, fetches mbedTLS 3.6 LTS source (Debian 13's
# signed source package) and unpacks SQLite for the cross targets. Idempotent: a second run with
# nothing missing takes about a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
deps=${VANTAGE_DEPS_DIR:-$top/.deps}
# The cross architectures of toolchains/arches.env: dpkg learns each, each gets its cross g++ and
# its SQLite and NATS trees below.
# shellcheck source=toolchains/arches.env
source "$here/arches.env"
read -r -a cross_arches <<<"$cross_arches"
cross_compilers=()
for a in "${cross_arches[@]}"; do
  triplet=${a}_triplet
  cross_compilers+=("g++-${!triplet}")
done
mbedtls_suite=trixie
mbedtls_version_prefix=3.6.

# Root is needed only to install packages; a machine that has them all needs no sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "bootstrap: '$*' needs root: run as root or install sudo" >&2
    exit 1
  fi
}

# Host tools, cross compilers and QEMU, and the header-only libraries (Multi-Arch: foreign or
# arch-independent, so the host's copy serves every target). python3 checks the agent's JSON in
# tests; iproute2 makes the network namespaces; irtt and collectd-core are the peers that
# bench/ measures the agent against (liboping0: collectd's ping plugin, only Recommended;
# libgcrypt20: its network plugin, which bench/collectd_cost.sh ships with, only Suggested).
# libsqlite3-dev is the collector's store on the host; the cross targets get theirs below.
# libtomlplusplus-dev (config files) is used header-only, so the cross targets need no .so of it.
# libnats-dev (the NATS C client, for the collector's JetStream sink; Debian ships only the .so)
# and nats-server (`nats-server -js` on loopback in tests); the cross targets' libnats below.
# prometheus and chromium are host programs for the collector's HTTP tests (a real scrape, the
# status page in a headless browser; curl for the 1 GiB POST against its HTTP port); cpp-httplib
# comes as source, see fetch_cpp_httplib.
# `make deb` and its test use file, dpkg-dev (dpkg-shlibdeps, to cross-check Depends), binutils
# (readelf, from build-essential; the cross strip comes with each cross g++), qemu-user-static,
# lintian (the packages must pass it) and man-db (the installed manual pages must show).
# The system tests under QEMU (tests/vm/) boot whole machines: qemu-system-arm and -x86, images
# made by mmdebstrap (arch-test to find a foreign architecture runnable through qemu-user), an
# initramfs packed with cpio from modules that kmod's depmod/modprobe pick, ext4 by e2fsprogs.
# The fleet simulator's firehose (bench/fleet) compares against victoria-metrics on loopback.
# python3-scapy: its scapy.contrib.stamp layer is the independent STAMP implementation the STAMP
# tests speak to (run under /usr/bin/python3, which sees Debian's modules).
host_packages=(
  build-essential cmake ninja-build pkg-config file dpkg-dev ca-certificates lintian man-db
  "${cross_compilers[@]}" qemu-user-static
  libasio-dev flatbuffers-compiler libflatbuffers-dev doctest-dev
  libboost-dev libreaderwriterqueue-dev libsqlite3-dev libtomlplusplus-dev
  python3 python3-scapy iproute2 irtt collectd-core liboping0 libgcrypt20
  clang-14 libclang-rt-14-dev openssl
  libnats-dev nats-server
  prometheus chromium victoria-metrics curl
  qemu-system-arm qemu-system-x86 mmdebstrap arch-test cpio kmod e2fsprogs
)

# `apt-get update` can fail while a mirror is mid-sync ("File has unexpected size"); retry with
# backoff, and after the last try carry on with the lists apt already has rather than failing a
# build over an index that none of our packages comes from.
apt_update() {
  local tries=${VANTAGE_APT_TRIES:-4} delay=5 i
  for ((i = 1; i <= tries; i++)); do
    if as_root apt-get "$@" update -q; then return 0; fi
    if ((i < tries)); then
      echo "bootstrap: apt-get update failed (try $i/$tries), retrying in ${delay}s" >&2
      sleep "$delay"; delay=$((delay * 2))
    fi
  done
  echo "bootstrap: apt-get update still failing; continuing with the package lists already present" >&2
  return 1
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

ensure_packages() {
  local need
  local current
  current=$(dpkg --print-foreign-architectures)
  local a added=0
  for a in "${cross_arches[@]}"; do
    if ! grep -qx "$a" <<<"$current"; then as_root dpkg --add-architecture "$a"; added=1; fi
  done
  mapfile -t need < <(missing_packages "${host_packages[@]}")
  if ((${#need[@]} == 0 && added == 0)); then return 0; fi
  apt_update || true
  if ((${#need[@]})); then
    echo "bootstrap: installing ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
}

# fetch_source SUITE PACKAGE VERSION_PREFIX DIR TREE: Debian's source package PACKAGE of SUITE,
# downloaded into DIR through a private apt configuration (the system's sources stay untouched)
# and unpacked into TREE (the Debian patches applied); prints its version. apt checks the .dsc and
# tarball hashes against the Release file signed by Debian's archive key (debian-archive-keyring
# ships the keys). The uploader's inline signature needs debian-keyring to check; the archive
# signature already covers the .dsc and tarballs by hash, so dpkg-source's warning about it is
# not shown.
fetch_source() {
  local suite=$1 pkg=$2 prefix=$3 dir=$4 tree=$5
  local apt_dir=$deps/apt-$suite
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
  local tries=4 i
  for ((i = 1; i <= tries; i++)); do
    apt-get "${opts[@]}" update -q >&2 && break
    ((i == tries)) && { echo "bootstrap: cannot read Debian $suite sources" >&2; return 1; }
    sleep $((5 * i))
  done
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && apt-get "${opts[@]}" source -q --download-only "$pkg/$suite") >&2
  local dsc version
  dsc=$(ls "$dir/${pkg}"_*.dsc)
  version=$(sed -n 's/^Version: //p' "$dsc")
  case "$version" in
    "$prefix"*) ;;
    *) echo "bootstrap: expected $pkg ${prefix}x, got $version" >&2; return 1 ;;
  esac
  rm -rf "$tree"
  if ! (cd "$dir" && dpkg-source -x "$(basename "$dsc")" "$tree") >"$dir.log" 2>&1; then
    cat "$dir.log" >&2
    return 1
  fi
  echo "$version"
}

# mbedTLS 3.6 LTS from Debian 13's source package (a GCC 14 build fix among its patches, no
# bundled third-party code).
fetch_mbedtls() {
  local dest=$deps/mbedtls version
  if [ -f "$dest/.vantage-version" ] && [ -f "$dest/include/mbedtls/build_info.h" ]; then return 0; fi
  version=$(fetch_source "$mbedtls_suite" mbedtls "$mbedtls_version_prefix" "$deps/src" "$dest.tmp")
  echo "$version" >"$dest.tmp/.vantage-version"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "bootstrap: mbedTLS $version source ready in $dest"
}

# SQLite for the cross targets. libsqlite3-dev:arm64/armhf cannot be installed beside the host's
# packages on these machines (Multi-Arch: same version skew with libssl3 and linux-libc-dev), so
# the two .debs are fetched with `apt-get download`, which checks them against the signed indices
# like an install would, and unpacked into a private sysroot per architecture
# ($deps/sysroot-<arch>) that the toolchain files add to CMAKE_FIND_ROOT_PATH. The -dev package
# carries libsqlite3.a: the store links it statically, so QEMU test runs need no target .so.

sqlite_packages=(libsqlite3-dev libsqlite3-0)

# unpack_for_targets WHAT DIR HEADER PKG...: for each cross architecture, Debian's PKG... of that
# architecture fetched with `apt-get download` and unpacked into $deps/DIR-<arch>, which is
# complete when it has HEADER. Each tree records the package versions it holds and is fetched
# again when a candidate changes. A tree whose first package (the -dev one) has the version
# installed on the host is current without asking apt-cache (about 2 s per query with three
# architectures' lists): the host's copy comes from the same archive.
unpack_for_targets() {
  local what=$1 dir=$2 header=$3
  shift 3
  local arch dest pkg v host versions spec debs deb
  host="$1=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null)"
  for arch in "${cross_arches[@]}"; do
    dest=$deps/$dir-$arch
    if [ -f "$dest/.vantage-version" ] && [ -f "$dest/$header" ] && [ "$(head -n 1 "$dest/.vantage-version")" = "$host" ]; then
      continue
    fi
    versions=() spec=()
    for pkg in "$@"; do
      v=$(apt-cache policy "$pkg:$arch" 2>/dev/null | sed -n 's/^ *Candidate: //p')
      if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        # No package index for the architecture yet (it was just added, or the lists were cleaned).
        apt_update || true
        v=$(apt-cache policy "$pkg:$arch" 2>/dev/null | sed -n 's/^ *Candidate: //p')
      fi
      if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        # Lists without the architecture cannot say the tree is stale: a complete one stays.
        if [ -f "$dest/.vantage-version" ] && [ -f "$dest/$header" ]; then
          echo "bootstrap: no $pkg:$arch in the package lists; keeping $dest" >&2
          continue 2
        fi
        echo "bootstrap: no $pkg:$arch candidate (is the $arch architecture in the apt sources?)" >&2
        return 1
      fi
      versions+=("$pkg=$v") spec+=("$pkg:$arch=$v")
    done
    if [ -f "$dest/.vantage-version" ] && [ -f "$dest/$header" ] &&
      [ "$(cat "$dest/.vantage-version")" = "$(printf '%s\n' "${versions[@]}")" ]; then
      continue
    fi
    debs=$deps/$dir-debs-$arch
    rm -rf "$debs" "$dest.tmp" && mkdir -p "$debs" "$dest.tmp"
    # The sandbox user cannot write into a root-owned $deps; apt has verified the files either way.
    (cd "$debs" && apt-get -q -o APT::Sandbox::User=root download "${spec[@]}")
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; done
    printf '%s\n' "${versions[@]}" >"$dest.tmp/.vantage-version"
    rm -rf "$dest" "$debs" && mv "$dest.tmp" "$dest"
    echo "bootstrap: $what ${versions[0]#*=} for $arch ready in $dest"
  done
}

# cpp-httplib (the collector's HTTP server) from Debian 12's source package, used header-only for
# every architecture. The binary packages are a split build: libcpp-httplib-dev's httplib.h only
# declares, the code is in libcpp-httplib.so built with OpenSSL, zlib and brotli (its pkg-config
# Cflags define all three, which changes the declared classes), and libcpp-httplib-dev:arm64/
# armhf cannot be installed here (libssl-dev:<arch> skews with the host's libssl3, as SQLite's
# does). The upstream single header needs none of that for plain HTTP, and the collector's
# package then depends on no extra shared library. Fetched like mbedTLS (fetch_source).
httplib_suite=bookworm
httplib_version_prefix=0.11.

fetch_cpp_httplib() {
  local dest=$deps/cpp-httplib src=$deps/src-httplib version
  if [ -f "$dest/.vantage-version" ] && [ -f "$dest/httplib.h" ]; then return 0; fi
  version=$(fetch_source "$httplib_suite" cpp-httplib "$httplib_version_prefix" "$src" "$src/tree")
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  cp "$src/tree/httplib.h" "$src/tree/LICENSE" "$dest.tmp/"
  echo "$version" >"$dest.tmp/.vantage-version"
  rm -rf "$dest" "$src" "$src.log" && mv "$dest.tmp" "$dest"
  echo "bootstrap: cpp-httplib $version (header-only) ready in $dest"
}

# The NATS C client for the cross targets, like SQLite: libnats-dev:arm64/armhf would pull
# libssl3:<arch>, which skews with the host's libssl3, so the .debs (libnats-dev, libnats3.4 and
# the libraries libnats3.4 needs: libssl3, libprotobuf-c1) are fetched with `apt-get download` and
# unpacked into $deps/nats-<arch>. Debian ships no libnats.a: the collector links libnats.so.3.4,
# the toolchain files pass its directory to the linker (-rpath-link) and to QEMU (LD_LIBRARY_PATH)
# for test runs, and on a target the package's Depends pulls libnats3.4.
nats_packages=(libnats-dev libnats3.4 libssl3 libprotobuf-c1)

ensure_packages
fetch_mbedtls
fetch_cpp_httplib
unpack_for_targets SQLite sysroot usr/include/sqlite3.h "${sqlite_packages[@]}"
unpack_for_targets "NATS C client" nats usr/include/nats/nats.h "${nats_packages[@]}"
