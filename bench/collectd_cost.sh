#!/usr/bin/env bash
# CPU and memory cost of vantage-agent next to collectd doing the same work at the same time.
#
# Three modes, each run RUNS times (default 3), each run for SECONDS (default 30), the agent and
# collectd side by side: 100 targets (127.0.0.2 ... 127.0.0.101) probed 10 times a second each,
# and host load sampled every second.
#  - icmp: ICMP against ICMP. The agent's ICMP prober (--icmp, --icmp-socket raw, as collectd's
#    liboping) and collectd's ping plugin, both answered by the kernel of their namespace.
#  - udp: the agent's UDP echo (--udp) against one reflector process bound to 0.0.0.0 that plays
#    the 100 remote peers (measured, never counted against the agent), next to the same collectd.
#  - ship: icmp, plus each side shipping what it measures to a receiver on its loopback: the agent
#    to a vantage-collector over mutual TLS (certificates from tools/dev-pki.sh, SQLite store and
#    the agent's spool in the temporary directory, batches at the agent's default 10 s interval),
#    collectd through its network plugin (SecurityLevel Encrypt; COLLECTD_SECURITY=None|Sign
#    changes it) to a second collectd listening with the network plugin (network-server.conf).
#    The receivers are measured and shown, not counted in the ratios.
# collectd (collectd-core, -f -C CONF from bench/collectd/collectd.conf) runs the cpu, memory,
# interface and load plugins at Interval 1 and ping to the 100 addresses with its ping Interval
# 0.1; in icmp and udp its values go to the csv plugin, in ship to the network plugin only.
# The agent is the same binary with --load-interval 1 --rate 10; in icmp and udp it prints one
# JSON report at the end, in ship also a report every 10 s, each a batch for the collector.
#
# Each side runs in a network namespace of its own (loopback only, new for every run), so that the
# two raw ICMP sockets do not each receive the other's packets, and each namespace's ICMP counters
# are its side's alone: InEchos (echo requests its kernel received and answered) and InEchoReps
# (replies received). The agent's work is its JSON "sent"/"received" (checked against its
# namespace's counters too); collectd's are its namespace's counters, and the ping values it wrote
# (csv) or its server received.
#
# The same external measurement for every process: utime+stime from /proc/PID/stat and VmRSS,
# VmHWM, RssAnon and RssFile from /proc/PID/status, polled every 50 ms and taken at the last poll
# before the agent exits (the other processes are read in the same poll, then stopped). Each
# run's ratios are agent / collectd; the summary prints the median of the runs' ratios and
# whether the issue's targets are met (agent CPU <= 0.5x and VmHWM <= 0.75x collectd's in icmp
# and ship). Then the agent alone at SCALE targets (default "300 1000") x 1 probe/s, UDP echo
# against one reflector on 127.0.x.y.
#
# usage: bench/collectd_cost.sh [VANTAGE_AGENT] [SECONDS] [VANTAGE_COLLECTOR]
#   defaults: build/bench/agent/vantage-agent, 30, the vantage-collector of the agent's build tree
#   environment: RUNS (3), MODES ("icmp udp ship"), SCALE ("300 1000"; "" skips it),
#   COLLECTD_SECURITY (Encrypt), COLLECTD_WRITE (csv; none loads no write plugin in icmp and udp,
#   to show what writing costs collectd)
# Writes everything it prints to build/bench-results/collectd_cost.txt. Needs root (network
# namespaces, raw ICMP sockets). Exits 1 when a run could not be measured or did not do its work
# (probes unanswered, nothing shipped), 2 when something it needs is missing; a missed target
# is printed, not an error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
agent=${1:-$top/build/bench/agent/vantage-agent}
seconds=${2:-30}
collector=${3:-$(dirname "$(dirname "$agent")")/collector/vantage-collector}
runs=${RUNS:-3}
modes=${MODES:-icmp udp ship}
scale=${SCALE-300 1000}
security=${COLLECTD_SECURITY:-Encrypt}
write=${COLLECTD_WRITE:-csv}
targets=100
rate=10                 # probes/s per target
ping_interval=0.1       # collectd ping plugin: seconds between rounds to all hosts
ping_timeout=0.09       # must be below the ping Interval
port=8627               # the reflector
collector_port=7443
network_port=25826      # collectd's network plugin
results_dir=$top/build/bench-results
results=$results_dir/collectd_cost.txt

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_start collectd_cost "network namespaces, raw ICMP" collectd ip python3 timeout ss openssl
case $security in None | Sign | Encrypt) ;; *) echo "collectd_cost: COLLECTD_SECURITY must be None, Sign or Encrypt" >&2; exit 2 ;; esac
case $write in csv | none) ;; *) echo "collectd_cost: COLLECTD_WRITE must be csv or none" >&2; exit 2 ;; esac
for mode in $modes; do
  case $mode in icmp | udp | ship) ;; *) echo "collectd_cost: MODES: unknown mode '$mode' (icmp, udp, ship)" >&2; exit 2 ;; esac
done
[[ $seconds =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ ]] || { echo "collectd_cost: SECONDS and RUNS must be whole numbers > 0" >&2; exit 2; }
# (Output captured first: with pipefail, grep -q quitting early could fail the pipeline on SIGPIPE.)
ping_libs=$(ldd /usr/lib/collectd/ping.so 2>&1 || true)
if ! grep -q 'liboping.*=> /' <<<"$ping_libs"; then
  echo "collectd_cost: collectd's ping plugin cannot load liboping (install liboping0; toolchains/bootstrap.sh does)" >&2
  exit 2
fi
if [[ " $modes " == *" ship "* ]]; then
  [ -x "$collector" ] || { echo "collectd_cost: $collector is not an executable (build the vantage-collector target)" >&2; exit 2; }
  network_libs=$(ldd /usr/lib/collectd/network.so 2>&1 || true)
  if [ ! -e /usr/lib/collectd/network.so ] || grep -q 'not found' <<<"$network_libs"; then
    echo "collectd_cost: collectd's network plugin is missing or cannot load (collectd-core ships it, libgcrypt20 it needs; toolchains/bootstrap.sh installs both)" >&2
    exit 2
  fi
fi
measure=$here/collectd_cost.py
mkdir -p "$results_dir"
exec > >(tee "$results") 2>&1

addresses=()
for ((i = 2; i < 2 + targets; i++)); do addresses+=("127.0.0.$i"); done
guard=$((seconds + 40))

# The collectd configurations. The password is per invocation; the server reads it from AuthFile.
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
ping_hosts=$(printf '  Host "%s"\n' "${addresses[@]}")
make_conf() {   # make_conf TEMPLATE OUT WRITE_SNIPPET WORK_DIR
  python3 - "$@" "$ping_hosts" "$ping_interval" "$ping_timeout" "$network_port" "$security" "$password" <<'EOF'
import sys
src, dst, write, work, hosts, interval, timeout, port, security, password = sys.argv[1:]
text = open(src).read().replace("@WRITE_PLUGIN@", write)
for key, value in (("PING_HOSTS", hosts), ("PING_INTERVAL", interval), ("PING_TIMEOUT", timeout), ("WORK", work),
                   ("NETWORK_PORT", port), ("SECURITY", security), ("PASSWORD", password)):
    text = text.replace(f"@{key}@", value)
open(dst, "w").write(text)
EOF
}
snippet() { grep -v '^#' "$here/collectd/$1"; }

if [[ " $modes " == *" ship "* ]]; then
  "$top/tools/dev-pki.sh" "$work/pki" bench-agent:bench:bench-pop >/dev/null
fi

echo "collectd_cost: $(date -u '+%Y-%m-%d %H:%M UTC'); $(uname -m), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  $(collectd -h 2>&1 | sed -n 's/^collectd \([0-9.]*[0-9]\).*/collectd \1/p' | head -n 1); $("$agent" --version | head -n 1)"
echo "  modes: $modes; $runs runs each of ${seconds} s; ${targets} targets x ${rate} probes/s, host load every 1 s"
echo "  agent:     $agent --once $seconds --json --load-interval 1 --rate $rate"
echo "               icmp: --icmp-socket raw --icmp 127.0.0.2 ... --icmp 127.0.0.$((targets + 1))"
echo "               udp:  --udp 127.0.0.2:$port ... (reflector: --once $((seconds + 20)) --load-interval 0 --reflector 0.0.0.0:$port --reflector-rate 100000)"
echo "               ship: as icmp, --interval 10 --collector 127.0.0.1:$collector_port --agent-id bench-agent --region bench --pop bench-pop --ca --cert --key --spool DIR"
echo "                     (collector: $collector serve --db DIR/store.db --region bench --listen 127.0.0.1:$collector_port --ca --cert --key)"
echo "  collectd:  collectd -f -C CONF: cpu, memory, interface, load at Interval 1; ping x${targets} at Interval ${ping_interval}, Timeout ${ping_timeout}"
echo "               icmp, udp: write plugin $write; ship: network plugin to a second collectd on 127.0.0.1:$network_port (SecurityLevel $security), which writes csv"

# spawn NS NAME CMD...: starts CMD in namespace NS under timeout; sets spawned=PID of CMD itself.
spawn() {
  local ns=$1 name=$2 t i; shift 2
  ip netns exec "$ns" timeout "$guard" "$@" >"$run/$name.out" 2>"$run/$name.err" &
  t=$!; pids+=("$t")
  spawned=""
  for ((i = 0; i < 100; i++)); do   # ip execs timeout, which forks the command
    spawned=$(cat "/proc/$t/task/$t/children" 2>/dev/null || true)
    spawned=${spawned%% *}
    if [ -n "$spawned" ] && [ "$(readlink "/proc/$spawned/exe" 2>/dev/null)" != "$(readlink /proc/$t/exe)" ]; then return 0; fi
    sleep 0.01
  done
  echo "collectd_cost: $name did not start" >&2; cat "$run/$name.err" >&2; return 1
}

# wait_listening NS PROTO PORT NAME: until something listens there (ss -u or -t).
wait_listening() {
  local i
  for ((i = 0; i < 200; i++)); do
    [ -n "$(ip netns exec "$1" ss -Hln"$2" "sport = :$3")" ] && return 0
    sleep 0.05
  done
  echo "collectd_cost: $4 is not listening on $3:" >&2; cat "$run/$4.err" >&2; return 1
}

new_namespace() { ip netns add "$1"; namespaces+=("$1"); ip -n "$1" link set lo up; }

# stop_all: ends what spawn started in this run (each timeout passes SIGTERM on), and its namespaces.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${namespaces[@]}"; do ip netns del "$p" 2>/dev/null || true; done
  pids=() namespaces=()
}

status=0
ratios=$work/ratios.jsonl
: >"$ratios"

# one_run MODE INDEX
one_run() {
  local mode=$1 index=$2 ns_a="vc-agent-$$" ns_c="vc-collectd-$$" agent_cmd a procs=() start rc=0
  run=$work/$mode-$index
  mkdir -p "$run" "$run/csv" "$run/server" "$run/server-csv"
  new_namespace "$ns_a"
  new_namespace "$ns_c"
  agent_cmd=("$agent" --once "$seconds" --json --load-interval 1 --rate "$rate")
  case $mode in
    udp)
      for a in "${addresses[@]}"; do agent_cmd+=(--udp "$a:$port"); done
      spawn "$ns_a" reflector "$agent" --once "$((seconds + 20))" --load-interval 0 --reflector "0.0.0.0:$port" --reflector-rate 100000 || return 1
      procs+=("reflector=$spawned")
      wait_listening "$ns_a" u "$port" reflector || return 1
      ;;
    icmp | ship)
      agent_cmd+=(--icmp-socket raw)
      for a in "${addresses[@]}"; do agent_cmd+=(--icmp "$a"); done
      ;;
  esac
  local write_conf="write-csv.conf"
  [ "$write" = csv ] || write_conf=""
  if [ "$mode" = ship ]; then
    write_conf="write-network.conf"
    mkdir -p "$run/spool"
    agent_cmd+=(--interval 10 --collector "127.0.0.1:$collector_port" --agent-id bench-agent --region bench --pop bench-pop
      --ca "$work/pki/ca.crt" --cert "$work/pki/bench-agent.crt" --key "$work/pki/bench-agent.key" --spool "$run/spool")
    spawn "$ns_a" collector "$collector" serve --db "$run/store.db" --region bench --listen "127.0.0.1:$collector_port" \
      --ca "$work/pki/ca.crt" --cert "$work/pki/collector.crt" --key "$work/pki/collector.key" || return 1
    procs+=("collector=$spawned")
    printf 'vantage-bench: %s\n' "$password" >"$run/server/passwd"
    make_conf "$here/collectd/network-server.conf" "$run/collectd-server.conf" "" "$run" || return 1
    spawn "$ns_c" collectd-server collectd -f -C "$run/collectd-server.conf" || return 1
    procs+=("collectd-server=$spawned")
    wait_listening "$ns_a" t "$collector_port" collector || return 1
    wait_listening "$ns_c" u "$network_port" collectd-server || return 1
  fi
  make_conf "$here/collectd/collectd.conf" "$run/collectd.conf" "$([ -z "$write_conf" ] || snippet "$write_conf")" "$run" || return 1
  start=$EPOCHREALTIME
  spawn "$ns_c" collectd collectd -f -C "$run/collectd.conf" || return 1
  local collectd_pid=$spawned
  spawn "$ns_a" agent "${agent_cmd[@]}" || return 1
  local agent_pid=$spawned
  python3 "$measure" sample "$run/sample.json" "$start" "$guard" "agent=$agent_pid" "collectd=$collectd_pid" "${procs[@]}" || rc=$?
  if ((rc == 0)); then
    set +e
    wait "${pids[-1]}"; rc=$?   # the agent's timeout
    set -e
    if ((rc != 0)); then echo "collectd_cost: the agent failed ($rc):" >&2; cat "$run/agent.err" >&2; fi
  fi
  stop_all
  if ((rc != 0)); then
    python3 -c 'import json,sys; print("collectd_cost:", json.load(open(sys.argv[1])).get("error", ""), file=sys.stderr)' "$run/sample.json" 2>/dev/null || true
    cat "$run/collectd.err" "$run/collectd.log" >&2 2>/dev/null || true
    return 1
  fi
  python3 "$measure" run "$ratios" "$mode" "$index" "$runs" "$run" "$targets" "$rate" "$seconds" "$security" "$write"
}

for ((index = 1; index <= runs; index++)); do
  for mode in $modes; do
    echo
    one_run "$mode" "$index" || { status=1; stop_all; }
  done
done
echo
python3 "$measure" summary "$ratios"

# The agent alone at larger target counts, 1 probe/s each: UDP echo against one reflector.
for n in $scale; do
  run=$work/scale-$n
  mkdir -p "$run"
  ns_a="vc-agent-$$"
  new_namespace "$ns_a"
  agent_cmd=("$agent" --once "$seconds" --json --load-interval 1 --rate 1)
  for ((i = 0; i < n; i++)); do agent_cmd+=(--udp "127.0.$((i / 250)).$((i % 250 + 2)):$port"); done
  spawn "$ns_a" reflector "$agent" --once "$((seconds + 20))" --load-interval 0 --reflector "0.0.0.0:$port" --reflector-rate 100000
  reflector_pid=$spawned
  wait_listening "$ns_a" u "$port" reflector
  start=$EPOCHREALTIME
  spawn "$ns_a" agent "${agent_cmd[@]}"
  rc=0
  python3 "$measure" sample "$run/sample.json" "$start" "$guard" "agent=$spawned" "reflector=$reflector_pid" || rc=$?
  if ((rc == 0)); then
    set +e; wait "${pids[-1]}"; rc=$?; set -e
    ((rc == 0)) || { echo "collectd_cost: the agent failed ($rc):" >&2; cat "$run/agent.err" >&2; }
  fi
  stop_all
  if ((rc == 0)); then
    python3 "$measure" scale "$ratios" "$run" "$n" 1 "$seconds" || status=1
  else
    status=1
  fi
done
if [ -n "$scale" ]; then echo; python3 "$measure" scale-table "$ratios"; fi
echo "(written to ${results#"$top"/})"
exit "$status"
