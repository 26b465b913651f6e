#!/usr/bin/env bash
# `make demo`: shows what the project can do today. The end-to-end demo (agents probing each other
# and shipping telemetry to a collector over mutual TLS) replaces this once the pipeline exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Vantage demo: measurement stage"
cat <<'TXT'
Built so far: the cross-architecture build with a static mbedTLS 3.6 (TLS 1.3), the FlatBuffers
wire schema, the lock-free rings, the latency histogram, and the agent's measurement: a UDP echo
reflector, UDP/TCP/ICMP probers and host load sampling. The collector and the TLS pipeline are
not built yet, so this demo shows the agent binary on all three architectures, two agents
measuring each other (native and under QEMU), and the hot-path pieces.
TXT

declare -A qemu=([aarch64]="qemu-aarch64-static -L /usr/aarch64-linux-gnu" [armhf]="qemu-arm-static -L /usr/arm-linux-gnueabihf")
for preset in release aarch64 armhf; do
  say "building vantage-agent ($preset)"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" --target vantage-agent | tail -n 1
  bin=build/$preset/agent/vantage-agent
  file -b "$bin" | cut -d, -f1-2
  # shellcheck disable=SC2086
  ${qemu[$preset]:-} "$bin" --version
done

say "two agents on loopback: one reflects, the other measures it for 5 s (UDP echo, TCP, ICMP)"
port=28627
build/release/agent/vantage-agent --once 20 --load-interval 0 --reflector "127.0.0.1:$port" \
  --reflector-rate 1000 2>/dev/null >/dev/null &
reflector=$!
trap 'kill $reflector 2>/dev/null || true' EXIT
sleep 0.5
build/release/agent/vantage-agent --once 5 --rate 20 --udp "127.0.0.1:$port" --rate 5 --icmp 127.0.0.1
say "the same measurement from the arm64 build under QEMU (user-space receive timestamps there)"
# shellcheck disable=SC2086
${qemu[aarch64]} build/aarch64/agent/vantage-agent --once 3 --rate 20 --udp "127.0.0.1:$port" --load-interval 0
kill "$reflector" 2>/dev/null || true

say "hot path: lock-free ring vs peers, histogram record cost (short run; make bench for the full one)"
cmake --preset bench >/dev/null
cmake --build --preset bench | tail -n 1
build/bench/bench/ring_bench --items 5000000 --reps 3
build/bench/bench/histogram_bench 5000000 3

say "done: run 'make test' for the full suite (native sanitizers, TSan, qemu-aarch64, qemu-arm)"
