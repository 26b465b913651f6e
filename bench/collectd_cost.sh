#!/usr/bin/env bash
# CPU and memory cost of vantage-agent next to collectd doing the same work at the same time.
#
# Workload (both at once, for SECONDS, default 60): 100 targets probed 10 times a second each, and
# host load sampled every second.
#  - vantage-agent: one process, --rate 10 --udp 127.0.0.2 ... 127.0.0.101 (UDP echo) and
#    --load-interval 1, against one reflector process bound to 0.0.0.0 that plays the 100 remote
#    peers (measured too, reported separately, never counted against the agent).
#  - collectd (collectd-core, -f -C CONF from bench/collectd/collectd.conf): plugins cpu, memory,
#    interface and load at Interval 1, and ping (ICMP, liboping) to the same 100 addresses with
#    its ping Interval 0.1; the kernel answers the pings. Its values go to the csv plugin in a
#    temporary directory (COLLECTD_WRITE=none loads no write plugin at all, to show what writing
#    costs).
# Everything runs inside a network namespace of its own (loopback only), so that the ports and
# the ICMP counters are this benchmark's alone on a shared machine.
#
# The same external measurement for every process: utime+stime from /proc/PID/stat (clock ticks,
# converted to seconds) and VmRSS / VmHWM from /proc/PID/status, polled every 0.1 s and taken at
# the last poll before the agent exits (collectd and the reflector are read in the same poll,
# then stopped). Work done: the agent's JSON "sent"/"received"; collectd's pings from the
# namespace's ICMP counters (InEchos: echo requests the kernel received, InEchoReps: replies
# back), read at the start and end of the same window.
#
# usage: bench/collectd_cost.sh [VANTAGE_AGENT] [SECONDS]   (defaults: build/bench/agent/vantage-agent, 60)
# Writes the table to build/bench-results/collectd_cost.txt. Needs root (network namespace, raw
# ICMP sockets).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
agent=${1:-$top/build/bench/agent/vantage-agent}
seconds=${2:-60}
targets=100
rate=10                 # probes/s per target
ping_interval=0.1       # collectd ping plugin: seconds between rounds to all hosts
ping_timeout=0.09       # must be below the ping Interval
write=${COLLECTD_WRITE:-csv}
port=8627
results_dir=$top/build/bench-results
results=$results_dir/collectd_cost.txt
ns=vantage-cost-$$

# shellcheck source=bench/common.sh
source "$here/common.sh"
namespaces=("$ns")
bench_start collectd_cost "network namespace, raw ICMP" collectd ip python3 timeout ss
case $write in csv | none) ;; *) echo "collectd_cost: COLLECTD_WRITE must be csv or none" >&2; exit 2 ;; esac
# (Output captured first: with pipefail, grep -q quitting early could fail the pipeline on SIGPIPE.)
ping_libs=$(ldd /usr/lib/collectd/ping.so 2>&1 || true)
if ! grep -q 'liboping.*=> /' <<<"$ping_libs"; then
  echo "collectd_cost: collectd's ping plugin cannot load liboping (install liboping0; toolchains/bootstrap.sh does)" >&2
  exit 2
fi

hz=$(getconf CLK_TCK)
addresses=()
for ((i = 2; i < 2 + targets; i++)); do addresses+=("127.0.0.$i"); done

# The collectd configuration.
ping_hosts=$(printf '  Host "%s"\n' "${addresses[@]}")
write_plugin=""
if [ "$write" = csv ]; then write_plugin=$(grep -v '^#' "$here/collectd/write-csv.conf"); fi
python3 - "$here/collectd/collectd.conf" "$work/collectd.conf" "$work" "$ping_hosts" "$ping_interval" "$ping_timeout" "$write_plugin" <<'EOF'
import sys
src, dst, work, hosts, interval, timeout, write = sys.argv[1:]
text = open(src).read().replace("@WRITE_PLUGIN@", write).replace("@PING_HOSTS@", hosts)
text = text.replace("@PING_INTERVAL@", interval).replace("@PING_TIMEOUT@", timeout).replace("@WORK@", work)
open(dst, "w").write(text)
EOF
mkdir -p "$work/csv"

guard=$((seconds + 30))
reflector_cmd=("$agent" --once "$((seconds + 20))" --load-interval 0 --reflector "0.0.0.0:$port" --reflector-rate 100000)
agent_cmd=("$agent" --once "$seconds" --json --load-interval 1 --rate "$rate")
for a in "${addresses[@]}"; do agent_cmd+=(--udp "$a:$port"); done
collectd_cmd=(collectd -f -C "$work/collectd.conf")

echo "collectd_cost: ${seconds} s, ${targets} targets x ${rate} probes/s, host load every 1 s; $(collectd -h 2>&1 | sed -n 's/^collectd \([0-9.]*[0-9]\).*/collectd \1/p' | head -n 1); $("$agent" --version | head -n 1)"
echo "  all inside netns $ns (lo only), each under timeout ${guard}s:"
echo "  reflector: ${reflector_cmd[*]}"
echo "  agent:     ${agent_cmd[*]:0:8} --udp 127.0.0.2:$port ... --udp 127.0.0.$((targets + 1)):$port"
echo "  collectd:  ${collectd_cmd[*]} (cpu, memory, interface, load at Interval 1; ping x${targets} at Interval ${ping_interval}, Timeout ${ping_timeout}; write plugin: ${write})"

ip netns add "$ns"
ip -n "$ns" link set lo up

# spawn NAME CMD...: starts CMD in the namespace under timeout; sets spawned=PID of CMD itself.
spawn() {
  local name=$1 t i; shift
  ip netns exec "$ns" timeout "$guard" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  t=$!; pids+=("$t")
  spawned=""
  for ((i = 0; i < 100; i++)); do   # ip execs timeout, which forks the command
    spawned=$(cat "/proc/$t/task/$t/children" 2>/dev/null || true)
    spawned=${spawned%% *}
    if [ -n "$spawned" ] && [ "$(readlink "/proc/$spawned/exe" 2>/dev/null)" != "$(readlink /proc/$t/exe)" ]; then return 0; fi
    sleep 0.01
  done
  echo "collectd_cost: $name did not start" >&2; cat "$work/$name.err" >&2; return 1
}

# sample PID: "ticks rss_kb hwm_kb" (utime+stime), or nothing once it is gone.
sample() {
  local stat status f rss=0 hwm=0
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  status=$(cat "/proc/$1/status" 2>/dev/null) || return 0
  f=${stat##*) }
  read -r -a f <<<"$f"            # f[0] is field 3 (state): utime is field 14, stime 15
  rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' <<<"$status")
  hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' <<<"$status")
  [ -n "$rss" ] || return 0       # a zombie has no memory lines
  echo "$((f[11] + f[12])) $rss $hwm"
}

# shellcheck disable=SC2016  # the awk program is meant literally
icmp_counters() {   # "InEchos InEchoReps" in the namespace
  ip netns exec "$ns" awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print $n["InEchos"], $n["InEchoReps"] }' /proc/net/snmp
}

spawn reflector "${reflector_cmd[@]}"; reflector_pid=$spawned
for ((i = 0; i < 100; i++)); do
  [ -n "$(ip netns exec "$ns" ss -Hunl "sport = :$port")" ] && break
  sleep 0.05
done
read -r echos0 replies0 < <(icmp_counters)
start=$EPOCHREALTIME
spawn collectd "${collectd_cmd[@]}"; collectd_pid=$spawned
spawn agent "${agent_cmd[@]}"; agent_pid=$spawned

deadline=$((SECONDS + guard))
agent_last="" collectd_last="" reflector_last="" end=$start echos1=$echos0 replies1=$replies0
while ((SECONDS < deadline)); do
  a=$(sample "$agent_pid")
  [ -n "$a" ] || break
  now=$EPOCHREALTIME
  c=$(sample "$collectd_pid")
  r=$(sample "$reflector_pid")
  read -r e1 r1 < <(icmp_counters)
  if [ -z "$c" ]; then echo "collectd_cost: collectd exited early:" >&2; cat "$work/collectd.err" "$work/collectd.log" >&2 2>/dev/null; exit 1; fi
  agent_last=$a collectd_last=$c reflector_last=$r end=$now echos1=$e1 replies1=$r1
  sleep 0.1
done
set +e
wait "${pids[2]}"; agent_rc=$?
set -e
if ((agent_rc != 0)); then echo "collectd_cost: the agent failed ($agent_rc):" >&2; cat "$work/agent.err" >&2; exit 1; fi
kill "${pids[1]}" "${pids[0]}" 2>/dev/null || true
wait "${pids[1]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true

ping_values=0
if [ "$write" = csv ]; then
  ping_values=$(cat "$work"/csv/*/ping/ping-127.0.0.* 2>/dev/null | grep -vc '^epoch' || true)
fi
collectd_warnings=$(grep -ciE 'error|warn' "$work/collectd.log" 2>/dev/null || true)

mkdir -p "$results_dir"
python3 - "$work/agent.out" "$work/reflector.out" "$start" "$end" "$hz" "$agent_last" "$collectd_last" "$reflector_last" \
  "$((echos1 - echos0))" "$((replies1 - replies0))" "$targets" "$seconds" "$write" "$ping_values" "$ping_interval" \
  "$collectd_warnings" <<'EOF' | tee "$results"
import json, sys
(out, reflector_out, start, end, hz, a, c, r, echos, replies, targets, seconds, write, ping_values, ping_interval,
 warnings) = sys.argv[1:]
start, end, hz, targets, seconds = float(start), float(end), int(hz), int(targets), float(seconds)
wall = end - start
final = None
for line in open(out):
    if line.strip():
        final = json.loads(line)
ts = final["targets"]
agent_window = (final["end_ns"] - final["start_ns"]) / 1e9
sent = sum(t["sent"] for t in ts)
received = sum(t["received"] for t in ts)
loads = len(final.get("load", []))

def parse(s):
    ticks, rss, hwm = (int(x) for x in s.split())
    return ticks / hz, rss / 1024.0, hwm / 1024.0
ac, ar, ah = parse(a)
cc, cr, ch = parse(c)
rc, rr, rh = parse(r) if r else (0.0, 0.0, 0.0)
echos, replies = int(echos), int(replies)

def ratio(x, y):
    return f"{x / y:.2f}" if y else "n/a"
rows = [
    ("CPU s (utime+stime)", f"{ac:.2f}", f"{cc:.2f}", ratio(ac, cc), f"{rc:.2f}"),
    ("CPU % of one core", f"{100 * ac / wall:.2f}", f"{100 * cc / wall:.2f}", ratio(ac, cc), f"{100 * rc / wall:.2f}"),
    ("VmRSS at end MiB", f"{ar:.1f}", f"{cr:.1f}", ratio(ar, cr), f"{rr:.1f}"),
    ("VmHWM peak MiB", f"{ah:.1f}", f"{ch:.1f}", ratio(ah, ch), f"{rh:.1f}"),
    ("probes sent", f"{sent}", f"{echos}", ratio(sent, echos), ""),
    ("replies", f"{received}", f"{replies}", ratio(received, replies), ""),
    ("probes/s per target", f"{sent / targets / seconds:.2f}", f"{echos / targets / wall:.2f}",
     ratio(sent / seconds, echos / wall), ""),
]
print(f"window {wall:.2f} s (start of collectd and agent to the last poll before the agent exited; agent --once {seconds:g}); clock ticks {hz}/s")
print(f"{'':<22} {'agent':>9} {'collectd':>9} {'agent/collectd':>15} {'reflector':>10}")
for row in rows:
    print(f"{row[0]:<22} {row[1]:>9} {row[2]:>9} {row[3]:>15} {row[4]:>10}")
print(f"agent: UDP echo, {len(ts)} targets, {loads} host load samples in its report; probes/s over its --once {seconds:g} s "
      f"(it sends only then; its report spans {agent_window:.2f} s with the wait for replies in flight), collectd's over the whole window")
print(f"collectd: ICMP via ping plugin (Interval {ping_interval}), probes counted as echo requests received by the namespace's kernel; "
      f"write plugin {write}" + (f", {ping_values} ping latency values written" if write == "csv" else "")
      + f"; {warnings} log lines with error/warn")
said = [l.strip() for l in open(reflector_out) if l.startswith("reflector:")]
print("reflector: a separate vantage-agent process playing the 100 peers, not counted against the agent"
      + (f" ({said[-1]})" if said else ""))
EOF
echo "(written to ${results#"$top"/})"
