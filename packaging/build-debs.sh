#!/usr/bin/env bash
# `make deb`: configures, builds (-j2) and packages the deb-amd64, deb-arm64 and deb-armhf presets
# into build/deb/: vantage-agent_<version>_<arch>.deb and vantage-collector_<version>_<arch>.deb.
# VANTAGE_DEB_ARCHES="arm64" limits it to some architectures. Logs go to build/deb-logs/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r -a arches <<<"${VANTAGE_DEB_ARCHES:-amd64 arm64 armhf}"
logs=build/deb-logs
mkdir -p "$logs" build/deb

for arch in "${arches[@]}"; do
  preset=deb-$arch
  start=$SECONDS
  if ! cmake --preset "$preset" >"$logs/$preset.configure.log" 2>&1; then
    cat "$logs/$preset.configure.log" >&2
    echo "make deb: configuring $preset failed" >&2
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
