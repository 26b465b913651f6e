#!/usr/bin/env bash
# `make demo`: three PoPs (fra1, ams1, sin1) probe each other's reflectors through relays that
# add realistic distances, and ship their telemetry over mutual TLS to a collector with a SQLite
# store; a live table read from the store shows RTT, jitter, loss and load per PoP for DURATION
# seconds (default 30). Everything runs on loopback; everything is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${DURATION:-30}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building vantage-agent and vantage-collector (release)"
cmake --preset release >/dev/null
cmake --build --preset release --target vantage-agent vantage-collector | tail -n 1
agent=$PWD/build/release/agent/vantage-agent
collector=$PWD/build/release/collector/vantage-collector

work=$PWD/build/demo
rm -rf "$work/spool-"* "$work/store.db"*
mkdir -p "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "development PKI (CA, collector and one certificate per agent) in $work/pki"
tools/dev-pki.sh "$work/pki" fra1-edge-01:eu-central:fra1 ams1-edge-01:eu-central:ams1 sin1-edge-01:eu-central:sin1

# Ports: collector, three reflectors, six one-way relays (from -> to).
base=$((20000 + RANDOM % 20000))
collector_port=$base
declare -A reflector=([fra1]=$((base + 1)) [ams1]=$((base + 2)) [sin1]=$((base + 3)))
declare -A rtt=([fra1-ams1]=8 [fra1-sin1]=160 [ams1-sin1]=170)
pops=(fra1 ams1 sin1)
relays=()
declare -A relay_port
n=10
for from in "${pops[@]}"; do
  for to in "${pops[@]}"; do
    [ "$from" = "$to" ] && continue
    key="$from-$to"; [ -n "${rtt[$key]:-}" ] || key="$to-$from"
    relay_port[$from-$to]=$((base + n)); n=$((n + 1))
    relays+=("${relay_port[$from-$to]}:127.0.0.1:${reflector[$to]}:${rtt[$key]}")
  done
done

say "collector on 127.0.0.1:$collector_port, store $work/store.db"
"$collector" serve --db "$work/store.db" --region eu-central --listen "127.0.0.1:$collector_port" \
  --ca "$work/pki/ca.crt" --cert "$work/pki/collector.crt" --key "$work/pki/collector.key" \
  2>"$work/collector.log" &
pids+=($!)
python3 tests/tools/delay_relay.py "${relays[@]}" >"$work/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "listening on" "$work/collector.log" && grep -q "relays ready" "$work/relay.log" && break
  sleep 0.1
done

for pop in "${pops[@]}"; do
  id=$pop-edge-01
  targets=()
  for to in "${pops[@]}"; do
    [ "$to" = "$pop" ] || targets+=(--udp "$to=127.0.0.1:${relay_port[$pop-$to]}")
  done
  "$agent" --agent-id "$id" --region eu-central --pop "$pop" --collector "127.0.0.1:$collector_port" \
    --ca "$work/pki/ca.crt" --cert "$work/pki/$id.crt" --key "$work/pki/$id.key" --spool "$work/spool-$pop" \
    --reflector "127.0.0.1:${reflector[$pop]}" --interval 2 --rate 10 --timeout 1000 "${targets[@]}" \
    2>"$work/agent-$pop.log" &
  pids+=($!)
  echo "agent $id: reflector 127.0.0.1:${reflector[$pop]}, probing ${targets[*]:1}"
done

say "live view from the store, every 3 s for ${duration} s (simulated RTTs: fra1-ams1 8 ms, fra1-sin1 160 ms, ams1-sin1 170 ms)"
end=$((SECONDS + duration))
while [ "$SECONDS" -lt "$end" ]; do
  sleep 3
  printf '\n--- %s\n' "$(date -u +%H:%M:%S)"
  "$collector" query --db "$work/store.db" | sed -n '1,/^agents/p' | sed '$d' | tee "$work/live.txt"
done

say "stopping: agents drain their spools, then the collector"
for pid in "${pids[@]:2}"; do kill -TERM "$pid"; done
for pid in "${pids[@]:2}"; do wait "$pid"; done
kill -TERM "${pids[0]}" "${pids[1]}"
wait "${pids[0]}" "${pids[1]}" || true
pids=()

say "what the store holds after a clean stop"
"$collector" query --db "$work/store.db" | sed -n '/^agents/,$p'
# The last live view must show round trips to both other PoPs and load, for every PoP.
missing=0
for pop in "${pops[@]}"; do
  rows=$(grep -Ec "^$pop +$pop-edge-01 +[a-z0-9]+ +udp[a-z_]* +[0-9]+ +[1-9][0-9]* " "$work/live.txt" || true)
  [ "$rows" -eq 2 ] || { echo "demo: $pop shows $rows of 2 latency rows with samples" >&2; missing=1; }
  grep -Eq "^$pop +$pop-edge-01 +[0-9.]+ " "$work/live.txt" || { echo "demo: no load from $pop" >&2; missing=1; }
done
[ "$missing" -eq 0 ] || exit 1

say "done"
cat <<EOF
The data is in $work/store.db (SQLite, WAL). Query it with
  $collector query --db $work/store.db
or any SQLite client, e.g. tables agents, batches, latency_summaries, load_samples (README: Store).
Logs: $work/*.log
EOF
