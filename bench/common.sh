# shellcheck shell=bash
# Sourced by the benchmarks that run the agent beside another tool (irtt_compare.sh,
# collectd_cost.sh): the checks both make first, and a work directory whose background processes
# ($pids) and network namespaces ($namespaces) are gone at exit, with the directory.
pids=() namespaces=()

# bench_start NAME WHY TOOL...: exits 2 unless this runs as root (WHY needs it) and each TOOL and
# $agent (the sourcing script's) are there; then $work is a new directory under /tmp, cleaned up
# at exit.
bench_start() {
  local name=$1 why=$2 tool
  shift 2
  if [ "$(id -u)" -ne 0 ]; then echo "$name: needs root ($why)" >&2; exit 2; fi
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool not found (toolchains/bootstrap.sh installs it)" >&2; exit 2; }
  done
  # shellcheck disable=SC2154 # agent: set by the sourcing script
  [ -x "$agent" ] || { echo "$name: $agent is not an executable (build the vantage-agent target)" >&2; exit 2; }
  work=$(mktemp -d "/tmp/vantage-$name.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # A namespace takes its end of a veth pair with it.
  for p in "${namespaces[@]}"; do ip netns del "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
