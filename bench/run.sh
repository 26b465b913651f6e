#!/usr/bin/env bash
# `make bench`: runs every benchmark in one go on this machine and prints what it ran on.
set -euo pipefail
dir=${1:?usage: bench/run.sh BUILD_DIR}
echo "machine: $(uname -m), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "kernel:  $(uname -r); compiler: $(c++ --version | head -n 1)"
echo
"$dir/ring_bench" "${@:2}"
echo
"$dir/histogram_bench"
