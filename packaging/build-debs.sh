#!/usr/bin/env bash
# `make deb`: builds (-j2) the two daemons of the release, aarch64 and armhf configurations (build
# presets deb-amd64, deb-arm64, deb-armhf) and packages them into build/deb/:
# vantage-agent_<version>_<arch>.deb and vantage-collector_<version>_<arch>.deb. The packages
# come from the same build trees, with the same flags, as the binaries the demo and the ARM unit
# suites run, so `make test` builds each of them once. VANTAGE_DEB_ARCHES="arm64" limits it to
# some architectures. Logs go to build/deb-logs/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=toolchains/arches.env
source toolchains/arches.env
read -r -a arches <<<"${VANTAGE_DEB_ARCHES:-$native_arch $cross_arches}"
logs=build/deb-logs
mkdir -p "$logs" build/deb

for arch in "${arches[@]}"; do
  preset=deb-$arch
  configure=${arch}_preset configure=${!configure:-}
  [ -n "$configure" ] || { echo "make deb: unknown architecture $arch ($native_arch $cross_arches)" >&2; exit 2; }
  start=$SECONDS
  if ! cmake --preset "$configure" >"$logs/$preset.configure.log" 2>&1; then
    cat "$logs/$preset.configure.log" >&2
    echo "make deb: configuring $configure failed" >&2
    exit 1
  fi
  if ! cmake --build --preset "$preset" >"$logs/$preset.build.log" 2>&1; then
    grep -E -A12 '^FAILED|error:' "$logs/$preset.build.log" | head -n 80 >&2
    echo "make deb: building $preset failed (log: $logs/$preset.build.log)" >&2
    exit 1
  fi
  # Old packages of this architecture go first, so build/deb holds exactly what this run made.
  rm -f build/deb/vantage-*_"$arch".deb
  if ! cpack --preset "$preset" >"$logs/$preset.cpack.log" 2>&1; then
    cat "$logs/$preset.cpack.log" >&2
    echo "make deb: packaging $preset failed" >&2
    exit 1
  fi
  echo "make deb: $arch in $((SECONDS - start))s"
done
ls -l build/deb/*.deb
