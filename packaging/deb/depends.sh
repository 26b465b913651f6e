#!/bin/sh
# Prints the Debian Depends line for the ELF files given: one entry per package that provides a
# NEEDED soname, with the lowest version that has every symbol version the files reference.
#
# Why not dpkg-shlibdeps: it resolves sonames through dpkg's database of the *target*
# architecture. For amd64 that works, but the arm64 and armhf builds link against Debian's cross
# libraries (libc6-arm64-cross, ...), which carry no symbols files and are named after the host,
# so the result would differ by architecture and name packages that do not exist on the target.
# This script applies one rule to every architecture instead: NEEDED entries and version needs
# come from `readelf` (which reads any ELF, so the host's serves the cross builds too), and the
# minimum versions follow Debian's symbols files:
#   libc6       >= the highest GLIBC_x.y referenced (glibc's symbol versions are its releases)
#   libgcc-s1   >= the highest GCC_x.y referenced (libgcc-s1.symbols maps GCC_x.y to x.y)
#   libstdc++6  >= the GCC release that the highest GLIBCXX_/CXXABI_ version node first
#                  appeared in, as libstdc++6.symbols in Debian 12 lists them (table below)
# A soname that is not in the table is an error: a new library must be mapped on purpose, not
# left out of Depends. tests/packaging/deb_test.sh checks the result against dpkg's file lists.
set -eu

if [ "$#" -lt 2 ]; then
  echo "usage: $0 READELF ELF..." >&2
  exit 2
fi
readelf=$1
shift

for f in "$@"; do
  [ -f "$f" ] || { echo "depends.sh: no such file: $f" >&2; exit 1; }
done

# "soname" lines from the dynamic section, then "soname version" pairs from .gnu.version_r.
{
  for f in "$@"; do
    LC_ALL=C "$readelf" -d -W "$f" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/needed \1/p'
    LC_ALL=C "$readelf" -V -W "$f" | awk '
      /File: / { for (i = 1; i <= NF; i++) if ($i == "File:") file = $(i + 1) }
      /Name: / && file != "" { for (i = 1; i <= NF; i++) if ($i == "Name:") print "version", file, $(i + 1) }
      /^Version symbols section|^Version definition section/ { file = "" }'
  done
} | LC_ALL=C awk '
  # Version strings compared numerically field by field ("2.34" < "2.4" is false here).
  function newer(a, b,    na, nb, x, y, i, n) {
    na = split(a, x, "."); nb = split(b, y, "."); n = na > nb ? na : nb
    for (i = 1; i <= n; i++) {
      if ((x[i] + 0) > (y[i] + 0)) return 1
      if ((x[i] + 0) < (y[i] + 0)) return 0
    }
    return 0
  }
  function need(pkg, ver) {
    if (!(pkg in min)) min[pkg] = ""
    if (ver != "" && (min[pkg] == "" || newer(ver, min[pkg]))) min[pkg] = ver
  }
  function package_of(so) {
    if (so ~ /^(libc|libm|libpthread|libdl|librt|libresolv|libanl|libutil)\.so\.[0-9]+$/ || so ~ /^ld-linux[-a-z0-9_.]*\.so\.[0-9]+$/)
      return "libc6"
    if (so == "libstdc++.so.6") return "libstdc++6"
    if (so == "libgcc_s.so.1") return "libgcc-s1"
    if (so == "libnats.so.3.4") return "libnats3.4"
    return ""
  }
  BEGIN {
    # libstdc++6: version node -> first Debian libstdc++6 version providing it (Debian 12 symbols).
    cxx["GLIBCXX_3.4.21"] = "5.2"; cxx["GLIBCXX_3.4.22"] = "6";   cxx["GLIBCXX_3.4.23"] = "10.2"
    cxx["GLIBCXX_3.4.24"] = "7";   cxx["GLIBCXX_3.4.25"] = "8";   cxx["GLIBCXX_3.4.26"] = "9"
    cxx["GLIBCXX_3.4.27"] = "9.1"; cxx["GLIBCXX_3.4.28"] = "10.2"; cxx["GLIBCXX_3.4.29"] = "11"
    cxx["GLIBCXX_3.4.30"] = "12"
    cxx["CXXABI_1.3.9"] = "5";     cxx["CXXABI_1.3.10"] = "6";    cxx["CXXABI_1.3.11"] = "10.2"
    cxx["CXXABI_1.3.12"] = "9";    cxx["CXXABI_1.3.13"] = "11"
    bad = 0
  }
  $1 == "needed" {
    pkg = package_of($2)
    if (pkg == "") { print "depends.sh: no package known for NEEDED " $2 " (add it to packaging/deb/depends.sh)" > "/dev/stderr"; bad = 1; next }
    # libnats exports no symbol versions; libnats3.4.symbols dates the JetStream calls the
    # collector uses (js_PublishMsgAsync, pull consumers, ...) to 3.2.0, as dpkg-shlibdeps finds.
    need(pkg, pkg == "libnats3.4" ? "3.2.0" : "")
  }
  $1 == "version" {
    pkg = package_of($2); node = $3
    if (pkg == "") next
    if (pkg == "libc6" && node ~ /^GLIBC_[0-9.]+$/) { sub(/^GLIBC_/, "", node); need(pkg, node) }
    else if (pkg == "libgcc-s1" && node ~ /^GCC_[0-9.]+$/) { sub(/^GCC_/, "", node); need(pkg, node) }
    else if (pkg == "libstdc++6" && node ~ /^(GLIBCXX|CXXABI)_[0-9.]+$/) {
      if (node in cxx) need(pkg, cxx[node])
      else if (node ~ /^GLIBCXX_3\.4(\.([0-9]|1[0-9]|20))?$/ || node ~ /^CXXABI_1\.3(\.[1-8])?$/) need(pkg, "4.1.1")
      else { print "depends.sh: no libstdc++6 version known for " node " (add it to the table)" > "/dev/stderr"; bad = 1 }
    }
  }
  END {
    if (bad) exit 1
    n = 0
    for (p in min) names[++n] = p
    # Sorted by name, so the line is the same on every run and architecture.
    for (i = 2; i <= n; i++) { v = names[i]; for (j = i - 1; j >= 1 && names[j] > v; j--) names[j + 1] = names[j]; names[j + 1] = v }
    out = ""
    for (i = 1; i <= n; i++) {
      p = names[i]
      out = out (i > 1 ? ", " : "") p (min[p] != "" ? " (>= " min[p] ")" : "")
    }
    print out
  }'
