#!/usr/bin/env bash
# vantage-agent as a user runs it: one process reflects, another measures it with --once, as a
# table and as JSON (checked field by field with python3), and a bad argument exits 2 with a
# one-line reason. Arguments: the command that runs the agent (the emulator's words first when
# cross-compiled, then the binary).
set -euo pipefail
agent=("$@")
work=$(mktemp -d)
cleanup() {
  [ -n "${reflector_pid:-}" ] && kill "$reflector_pid" 2>/dev/null && wait "$reflector_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 60 "${agent[@]}" --once 30 --load-interval 0 --reflector "127.0.0.1:$port" --reflector-rate 1000 \
  >"$work/reflector.out" 2>"$work/reflector.err" &
reflector_pid=$!
for _ in $(seq 100); do
  grep -q "reflector listening" "$work/reflector.err" && break
  sleep 0.1
done
grep -q "reflector listening on 127.0.0.1 port $port" "$work/reflector.err" || {
  echo "reflector did not start:"; cat "$work/reflector.err"; exit 1
}

timeout 60 "${agent[@]}" --once 2 --rate 20 --timeout 500 --udp "127.0.0.1:$port" --load-interval 0.5 >"$work/table"
cat "$work/table"
grep -q "^TARGET .*P50" "$work/table"
grep -Eq "^127\.0\.0\.1:$port +udp +[0-9]+ +[0-9]+ +0 " "$work/table"
grep -q "^host: " "$work/table"

timeout 60 "${agent[@]}" --once 2 --json --rate 20 --timeout 500 --udp "127.0.0.1:$port" --load-interval 0.5 \
  >"$work/json"
python3 - "$work/json" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, f"expected one report, got {len(lines)} lines"
r = json.loads(lines[0])
assert r["final"] is True
t = r["targets"][0]
assert t["protocol"] == "udp", t
assert t["sent"] >= 20, t
assert t["received"] == t["sent"] and t["lost"] == 0, t
assert 0 < t["rtt_ns"]["p50"] <= t["rtt_ns"]["max"] < 100_000_000, t
assert t["timestamps"] in ("kernel", "userspace"), t
assert len(r["load"]) >= 3, len(r["load"])
total = r["load"][0]["cpus"][0]
assert total["cpu"] == -1 and abs(sum(total[k] for k in ("user", "system", "iowait", "steal", "irq", "softirq", "idle")) - 1) < 1e-3, total
assert r["load"][0]["memory"]["total_bytes"] > 0
assert r["end_ns"] - r["start_ns"] >= 2_000_000_000
print("json ok:", t["sent"], "probes, p50", t["rtt_ns"]["p50"], "ns,", t["timestamps"], "stamps")
PY

set +e
"${agent[@]}" --once 1 --rate 0 --udp 127.0.0.1 >"$work/bad.out" 2>"$work/bad.err"
rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "bad argument: exit $rc, expected 2"; exit 1; }
head -n 1 "$work/bad.err" | grep -q "^vantage-agent: --rate: " || { cat "$work/bad.err"; exit 1; }
echo "once_cli: ok"
