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
