#!/usr/bin/env bash
# Checks the packages `make deb` wrote to build/deb (or $1): for amd64, arm64 and armhf, that
# vantage-agent and vantage-collector hold a stripped binary of the right architecture that runs
# (under qemu-<arch>-static for ARM) and accepts its example config, the unit and the conffiles,
# sane maintainer scripts, a Depends entry for every shared library the binary needs, Debian's
# documentation (copyright, changelog, manual page), and no lintian error or warning (info and
# pedantic hints are printed). The amd64 packages are installed into (and purged from) a scratch
# root with dpkg --root; the installed binaries run from there and `man` shows their manual pages.
# Exits non-zero after listing every failed check.
# shellcheck disable=SC2015 # `test && ok || fail`: ok always succeeds
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1

debs=$(cd "${1:-build/deb}" && pwd) || { echo "deb_test: no package directory ${1:-build/deb}" >&2; exit 1; }
version=$(sed -n 's/^project(vantage VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || { echo "deb_test: cannot read the project version from CMakeLists.txt" >&2; exit 1; }
work=$(mktemp -d /tmp/vantage-deb-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

failures=0 checks=0
ok() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*" >&2; }
check() {  # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1; shift
  if "$@" >"$work/out" 2>&1; then ok; else fail "$what"; sed 's/^/    /' "$work/out" >&2; fi
}

# The collector's libnats.so.3.4 (and libssl, libprotobuf-c) for ARM come from Debian's .debs
# that toolchains/bootstrap.sh unpacks into .deps/nats-<arch>: not installed, so dpkg owns none.
# arch | `file` says | where the target's shared libraries are | how to run a binary: for each
# architecture of toolchains/arches.env.
# shellcheck source=toolchains/arches.env
source toolchains/arches.env
triplet=${native_arch}_triplet elf=${native_arch}_elf
targets=("$native_arch|${!elf}|/lib/${!triplet} /usr/lib/${!triplet}|")
for a in $cross_arches; do
  triplet=${a}_triplet elf=${a}_elf qemu=${a}_qemu
  nats=$PWD/.deps/nats-$a/usr/lib/${!triplet}
  targets+=("$a|${!elf}|/usr/${!triplet}/lib $nats|qemu-${!qemu}-static -L /usr/${!triplet} -E LD_LIBRARY_PATH=$nats")
done

# The Debian package on the target that ships a library: dpkg's owner of the cross copy, with
# the cross suffix (libc6-arm64-cross -> libc6) and the host qualifier (libc6:amd64) removed.
# A library found only in an unpacked .deps tree is named by the host's copy of the same
# soname (Multi-Arch: same packages have one name on every architecture).
library_package() {
  local soname=$1 dirs=$2 d owner
  for d in $dirs; do
    [ -e "$d/$soname" ] || continue
    owner=$(dpkg -S "$d/$soname" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    if [ -z "$owner" ] && [[ $d == "$PWD/.deps/"* ]]; then
      owner=$(dpkg -S "/usr/lib/x86_64-linux-gnu/$soname" "/lib/x86_64-linux-gnu/$soname" 2>/dev/null |
        head -n 1 | cut -d: -f1) || true
    fi
    if [ -n "$owner" ]; then
      sed -E "s/-(${cross_arches// /|}|$native_arch)-cross\$//" <<<"$owner"
      return 0
    fi
  done
  return 1
}

# Package names in a Depends line ("libc6 (>= 2.34), libstdc++6 (>= 12)" -> one per line).
depends_names() { tr ',' '\n' <<<"$1" | sed -E 's/\(.*\)//; s/\|.*//; s/[[:space:]]//g' | sed '/^$/d'; }

check_package() {  # check_package ARCH FILE_SAYS LIBDIRS RUNNER COMPONENT
  local arch=$1 says=$2 libdirs=$3 runner=$4 comp=$5
  local pkg=vantage-$comp deb="$debs/vantage-${comp}_${version}_${arch}.deb"
  local root="$work/$arch/$pkg" ctrl="$work/$arch/$pkg.control"
  local bin=usr/bin/$pkg conf=etc/vantage/$comp.toml
  echo "--- $pkg $arch"
  if [ ! -f "$deb" ]; then fail "$arch: $deb is missing"; return; fi
  mkdir -p "$root" "$ctrl"
  dpkg-deb -x "$deb" "$root" && dpkg-deb -e "$deb" "$ctrl" || { fail "$arch: dpkg-deb cannot unpack $deb"; return; }

  local field
  for field in "Package:$pkg" "Version:$version" "Architecture:$arch"; do
    [ "$(dpkg-deb -f "$deb" "${field%%:*}")" = "${field#*:}" ] && ok ||
      fail "$arch $pkg: ${field%%:*} is '$(dpkg-deb -f "$deb" "${field%%:*}")', expected '${field#*:}'"
  done

  # The binary: architecture, stripped, mbedTLS and SQLite linked in rather than needed.
  if [ ! -x "$root/$bin" ]; then fail "$arch $pkg: /$bin missing or not executable"; return; fi
  local desc
  desc=$(file -b "$root/$bin")
  [[ $desc == *"$says"* ]] && ok || fail "$arch $pkg: file says '$desc', expected '$says'"
  [[ $desc == *", stripped"* ]] && ok || fail "$arch $pkg: binary is not stripped ($desc)"
  local needed
  needed=$(LC_ALL=C readelf -d -W "$root/$bin" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p')
  [ -n "$needed" ] && ok || fail "$arch $pkg: no NEEDED entries read from /$bin"
  grep -Eq '^lib(mbed|sqlite)' <<<"$needed" && fail "$arch $pkg: links mbedTLS/SQLite dynamically: $needed" || ok

  # Depends covers every NEEDED soname.
  local depends names soname owner
  depends=$(dpkg-deb -f "$deb" Depends)
  names=$(depends_names "$depends")
  echo "    Depends: $depends"
  for soname in $needed; do
    if ! owner=$(library_package "$soname" "$libdirs"); then
      fail "$arch $pkg: NEEDED $soname is not in $libdirs (or no package owns it)"
    elif grep -qx -- "$owner" <<<"$names"; then
      ok
    else
      fail "$arch $pkg: NEEDED $soname comes from $owner, which Depends ('$depends') does not name"
    fi
  done
  # Natively dpkg-shlibdeps can answer too: the computed line must be the same.
  if [ "$arch" = amd64 ]; then
    mkdir -p "$work/shlibdeps/debian"
    printf 'Source: vantage\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$work/shlibdeps/debian/control"
    local native
    native=$(cd "$work/shlibdeps" && dpkg-shlibdeps -O "$root/$bin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    [ "$native" = "$depends" ] && ok || fail "$arch $pkg: Depends '$depends' differs from dpkg-shlibdeps '$native'"
  fi

  # Unit, example config as a conffile, documentation.
  [ -f "$root/lib/systemd/system/$pkg.service" ] && ok || fail "$arch $pkg: /lib/systemd/system/$pkg.service missing"
  grep -q "^ExecStart=/$bin " "$root/lib/systemd/system/$pkg.service" 2>/dev/null && ok ||
    fail "$arch $pkg: the unit's ExecStart does not run /$bin"
  [ -f "$root/$conf" ] && ok || fail "$arch $pkg: /$conf missing"
  [ -f "$root/usr/share/doc/$pkg/README.md" ] && ok || fail "$arch $pkg: /usr/share/doc/$pkg/README.md missing"
  if [ -f "$ctrl/conffiles" ]; then
    [ "$(cat "$ctrl/conffiles")" = "/$conf" ] && ok ||
      fail "$arch $pkg: conffiles is '$(tr '\n' ' ' <"$ctrl/conffiles")', expected exactly /$conf"
  else
    fail "$arch $pkg: no conffiles in the control archive"
  fi
  # Debian's documentation: the copyright file, the changelog (a native package's changelog.gz),
  # the manual page, and the lintian override that gives the reason for the static Mbed TLS.
  local doc
  for doc in "usr/share/doc/$pkg/copyright" "usr/share/doc/$pkg/changelog.gz" "usr/share/man/man8/$pkg.8.gz" \
    "usr/share/lintian/overrides/$pkg"; do
    [ -f "$root/$doc" ] && ok || fail "$arch $pkg: /$doc missing"
  done
  lintian_check "$arch $pkg" "$deb"
  # Captured first: grep -q stopping early would fail the pipeline through SIGPIPE (pipefail).
  local info
  info=$(dpkg-deb -I "$deb")
  grep -Eq '^ .* conffiles *$' <<<"$info" && ok || fail "$arch $pkg: dpkg-deb -I lists no conffiles"

  # Maintainer scripts: POSIX sh, set -e, executable.
  local s
  for s in postinst prerm postrm; do
    if [ ! -f "$ctrl/$s" ]; then fail "$arch $pkg: no $s"; continue; fi
    check "$arch $pkg: $s passes sh -n" sh -n "$ctrl/$s"
    [ "$(head -n 1 "$ctrl/$s")" = "#!/bin/sh" ] && ok || fail "$arch $pkg: $s does not start with #!/bin/sh"
    grep -qx 'set -e' "$ctrl/$s" && ok || fail "$arch $pkg: $s does not 'set -e'"
    [ "$(stat -c %a "$ctrl/$s")" = 755 ] && ok || fail "$arch $pkg: $s has mode $(stat -c %a "$ctrl/$s"), not 755"
  done

  # It runs (under QEMU for ARM) and accepts the example config it ships.
  run_checks "$arch $pkg (extracted)" "$runner" "$root/$bin" "$comp" "$root/$conf"
}

# lintian as a Debian developer runs it: any error or warning fails (an override in the package,
# with its reason, is how a deliberate exception is kept); info and pedantic hints are printed.
lintian_check() {  # lintian_check LABEL DEB
  local label=$1 deb=$2 out rc=0
  out=$(lintian --display-info --pedantic --fail-on error,warning "$deb" 2>&1) || rc=$?
  [ -z "$out" ] || sed 's/^/    lintian: /' <<<"$out"
  if ((rc)) || grep -q '^[EW]: ' <<<"$out"; then
    fail "$label: lintian reports errors or warnings (exit $rc)"
  else
    ok
  fi
}

# The installed manual page as `man` shows it: it holds the binary's own --help (its last option
# or command) and --config-reference (its last key), from which it was generated.
man_checks() {  # man_checks LABEL ROOT PACKAGE
  local label=$1 root=$2 pkg=$3 page help_word key
  if ! page=$(MANWIDTH=200 man -M "$root/usr/share/man" -P cat "$pkg" 2>&1); then
    fail "$label: man $pkg failed: $page"
    return
  fi
  help_word=$("$root/usr/bin/$pkg" --help | sed -n 's/^  \([^ ][^ ]*\) .*/\1/p' | tail -n 1)
  key=$("$root/usr/bin/$pkg" --config-reference | sed -n 's/^| `\([^`]*\)`.*/\1/p' | tail -n 1)
  grep -q "^${pkg^^}(8)" <<<"$page" && ok || fail "$label: man $pkg shows no ${pkg^^}(8) page"
  [ -n "$help_word" ] && grep -qF -- "$help_word" <<<"$page" && ok ||
    fail "$label: man $pkg lacks '$help_word' from --help"
  [ -n "$key" ] && grep -qF -- "$key" <<<"$page" && ok || fail "$label: man $pkg lacks the key '$key' from --config-reference"
}

run_checks() {  # run_checks LABEL RUNNER BINARY COMPONENT CONFIG
  local label=$1 runner=$2 bin=$3 comp=$4 conf=$5 out
  # shellcheck disable=SC2086 # the runner is a command with its options
  out=$($runner "$bin" --version 2>&1)
  if [ "$comp" = agent ] || [[ $out == "vantage-$comp "* ]]; then
    [[ $out == "vantage-$comp $version "* ]] && ok || fail "$label: --version printed '$out'"
    echo "    $out"
  else
    # vantage-collector has no --version yet: its config reference shows that the binary runs.
    # shellcheck disable=SC2086
    out=$($runner "$bin" --config-reference 2>&1)
    grep -q '^|' <<<"$out" && ok || fail "$label: --config-reference printed '$out'"
    echo "    (no --version: ran --config-reference)"
  fi
  if [ "$comp" = agent ]; then
    # shellcheck disable=SC2086
    check "$label: --check-config $conf" $runner "$bin" --check-config --config "$conf"
  else
    # shellcheck disable=SC2086
    check "$label: serve --config $conf --check-config" $runner "$bin" serve --config "$conf" --check-config
  fi
}

start=$SECONDS
for t in "${targets[@]}"; do
  IFS='|' read -r arch says libdirs runner <<<"$t"
  for comp in agent collector; do
    check_package "$arch" "$says" "$libdirs" "$runner" "$comp"
  done
done

# amd64: install both packages into a scratch root as dpkg would on a server, run the installed
# binaries, then purge. The maintainer scripts run outside the root with DPKG_ROOT set
# (--force-script-chrootless): the root has no shell to chroot into.
echo "--- dpkg --root install of the amd64 packages"
root=$work/root
mkdir -p "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/info" "$root/var/log"
touch "$root/var/lib/dpkg/status"
dpkg_root=(dpkg --root="$root" --force-script-chrootless --force-depends)
[ "$(id -u)" -eq 0 ] || dpkg_root+=(--force-not-root)
amd64_debs=("$debs/vantage-agent_${version}_amd64.deb" "$debs/vantage-collector_${version}_amd64.deb")
if check "dpkg --root -i the amd64 packages" "${dpkg_root[@]}" -i "${amd64_debs[@]}"; then
  for comp in agent collector; do
    pkg=vantage-$comp
    status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' "$pkg" 2>&1)
    [ "$status" = "install ok installed" ] && ok || fail "installed $pkg: status '$status'"
    conffiles=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}' "$pkg" 2>&1)
    grep -Eq "^ /etc/vantage/$comp.toml [0-9a-f]{32}$" <<<"$conffiles" && ok ||
      fail "installed $pkg: dpkg did not register /etc/vantage/$comp.toml as a conffile ('$conffiles')"
    [ -f "$root/lib/systemd/system/$pkg.service" ] && ok || fail "installed $pkg: unit missing under $root/lib/systemd/system"
    run_checks "installed $pkg" "" "$root/usr/bin/$pkg" "$comp" "$root/etc/vantage/$comp.toml"
    if [ "$comp" = agent ]; then
      # The pseudonym secret the unit's LoadCredential= names: 64 hex digits, root-only.
      key=$root/etc/vantage/privacy.key
      [ "$(stat -c %a "$key" 2>&1)" = 600 ] && ok || fail "installed $pkg: $key mode '$(stat -c %a "$key" 2>&1)', expected 600"
      grep -Eqx '[0-9a-f]{64}' "$key" 2>/dev/null && ok || fail "installed $pkg: $key is not 64 hex digits"
    fi
    man_checks "installed $pkg" "$root" "$pkg"
    # What the service would have left behind, for the purge to remove.
    mkdir -p "$root/var/lib/private/$pkg" "$root/etc/systemd/system/multi-user.target.wants"
    ln -sfn "private/$pkg" "$root/var/lib/$pkg"
    ln -sfn "/lib/systemd/system/$pkg.service" "$root/etc/systemd/system/multi-user.target.wants/$pkg.service"
  done
  if check "dpkg --root --purge the amd64 packages" "${dpkg_root[@]}" --purge vantage-agent vantage-collector; then
    for comp in agent collector; do
      pkg=vantage-$comp
      # Also deb-systemd-helper's state and mask (the purge runs postrm remove, then purge).
      left=$(cd "$root" && ls -d "usr/bin/$pkg" "etc/vantage/$comp.toml" "var/lib/$pkg" "var/lib/private/$pkg" \
        "etc/vantage/privacy.key" \
        "etc/systemd/system/multi-user.target.wants/$pkg.service" "etc/systemd/system/$pkg.service" \
        "var/lib/systemd/deb-systemd-helper-enabled/$pkg.service.dsh-also" \
        "var/lib/systemd/deb-systemd-helper-masked/$pkg.service" 2>/dev/null)
      [ -z "$left" ] && ok || fail "purged $pkg: left behind: $left"
    done
  fi
fi

echo
if ((failures)); then
  echo "deb_test: $failures of $checks checks FAILED ($((SECONDS - start))s)"
  exit 1
fi
echo "deb_test: all $checks checks passed ($((SECONDS - start))s)"
