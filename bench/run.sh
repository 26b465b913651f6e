#!/usr/bin/env bash
# `make bench`: runs every benchmark in one go on this machine and prints what it ran on.
set -euo pipefail
dir=${1:?usage: bench/run.sh BUILD_DIR}
echo "machine: $(uname -m), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "kernel:  $(uname -r); compiler: $(c++ --version | head -n 1)"
echo
flags=$(sed -n 's/^CMAKE_CXX_FLAGS_RELEASE:[A-Z]*=//p' "$dir/../CMakeCache.txt")
echo "--- ring_bench, release flags ($flags)"
"$dir/ring_bench" "${@:2}"
echo
echo "--- ring_bench_o2, the same source at -O2 (Debian's packaging default)"
"$dir/ring_bench_o2" "${@:2}"
echo
echo "--- histogram_bench ($flags)"
"$dir/histogram_bench"

# The agent next to its peers. Both need root (network namespaces), so without it they are
# skipped with a note; both run even if the first misses its target, and the exit status says
# whether either failed.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
agent=$(dirname "$dir")/agent/vantage-agent
status=0
echo
if [ "$(id -u)" -ne 0 ]; then
  echo "--- irtt_compare and collectd_cost skipped: they need root (network namespaces)"
  exit 0
fi
echo "--- irtt_compare: agent p50 next to irtt's median RTT, loopback and veth between namespaces"
"$here/irtt_compare.sh" "$agent" || status=$?
echo
echo "--- collectd_cost: agent CPU and memory next to collectd, 100 targets at 10/s + 1 s host load"
"$here/collectd_cost.sh" "$agent" || status=$?
exit "$status"
