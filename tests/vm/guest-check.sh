#!/bin/sh
# Runs inside the QEMU guest (as /run/payload/run.sh, from the payload disk): installs the agent
# package, starts the service against the host's collector and reports every check on the
# console as "VANTAGE-CHECK name=NAME ok|fail DETAIL" and every figure as
# "VANTAGE-FIGURE name=NAME value=N". tests/vm/system_test.py reads them. vars.sh gives ACK_TIMEOUT
# and DRAIN (seconds).
p=/run/payload
. $p/vars.sh
check() { echo "VANTAGE-CHECK name=$1 $2 $3"; }
figure() { echo "VANTAGE-FIGURE name=$1 value=$2"; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
prop() { systemctl show -p "$1" --value vantage-agent.service; }
status() { prop StatusText; }
acked() { status | sed -n 's/.*acked through \([0-9]*\).*/\1/p'; }
# wait_for SECONDS COMMAND...: poll until the command succeeds
wait_for() {
  limit=$(($(now_ms) + $1 * 1000)); shift
  while ! "$@"; do
    [ "$(now_ms)" -lt "$limit" ] || return 1
    sleep 0.2
  done
}
acked_at_least() { a=$(acked); [ -n "$a" ] && [ "$a" -ge "$1" ]; }

figure boot_to_multi_user_ms $(($(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target) / 1000))

if dpkg -i $p/vantage-agent.deb >$p/dpkg.log 2>&1; then
  check dpkg-install ok "$(dpkg-query -W -f='${Package} ${Version} ${Architecture}' vantage-agent)"
else
  check dpkg-install fail "$(tail -n 5 $p/dpkg.log | tr '\n' ' ')"
fi
install -d -m 0755 /etc/vantage/pki
install -m 0644 $p/ca.crt $p/agent.crt /etc/vantage/pki/
install -m 0600 $p/agent.key /etc/vantage/pki/agent.key
install -m 0644 $p/agent.toml /etc/vantage/agent.toml

# Type=notify: `systemctl start` returns once READY=1 arrived (or the start failed).
t0=$(now_ms)
systemctl start vantage-agent.service
state=$(systemctl is-active vantage-agent.service)
if [ "$state" = active ]; then
  check unit-active ok "READY=1 after $(($(now_ms) - t0)) ms"
else
  check unit-active fail "state $state: $(journalctl -b -u vantage-agent --no-pager | tail -n 8 | tr '\n' ' ')"
fi

if wait_for "$ACK_TIMEOUT" acked_at_least 1; then
  figure first_acked_batch_ms $(($(now_ms) - t0))
  check first-ack ok "$(status)"
else
  check first-ack fail "no batch acked within ${ACK_TIMEOUT}s: $(status)"
  # Nothing after this can pass without a collector: say so and stop early.
  for c in reload stop watchdog; do check $c fail "skipped: no batch was acked"; done
  journalctl -b -u vantage-agent --no-pager -o cat | tail -n 10
  exit 1
fi
# A few report intervals so both directions' probes reach the stores.
wait_for 20 acked_at_least 3
pid=$(prop MainPID)
figure agent_rss_kib "$(awk '/^VmRSS:/ { print $2 }' /proc/"$pid"/status)"

# Reload with another target name: back to active with configuration generation 2, and batches
# acked after it.
before=$(acked)
install -m 0644 $p/agent-reload.toml /etc/vantage/agent.toml
t=$(now_ms)
systemctl reload vantage-agent.service
# ExecReload only sends SIGHUP: the unit stays "reloading" until the agent sends READY=1 again.
back() { state=$(systemctl is-active vantage-agent.service); [ "$state" = active ] && status | grep -q 'config generation 2'; }
if wait_for "$ACK_TIMEOUT" back &&
  wait_for "$ACK_TIMEOUT" acked_at_least $((${before:-0} + 2)); then
  check reload ok "generation 2 running after $(($(now_ms) - t)) ms: $(status)"
else
  check reload fail "state $state after $(($(now_ms) - t)) ms: $(status)"
fi

# Stop: within the drain bound (plus what systemd and the emulator take), with nothing left over.
t=$(now_ms)
systemctl stop vantage-agent.service
took=$(($(now_ms) - t))
line=$(journalctl -b -u vantage-agent --no-pager -o cat | grep 'stopped:' | tail -n 1)
if [ "$took" -le $(((DRAIN + 5) * 1000)) ] && [ "$(systemctl is-active vantage-agent.service)" = inactive ]; then
  check stop ok "in ${took} ms (drain ${DRAIN}s): $line"
else
  check stop fail "took ${took} ms, state $(systemctl is-active vantage-agent.service): $line"
fi

# Watchdog: the unit says WatchdogSec=30; a drop-in lowers it to 5 s so the test is short.
mkdir -p /etc/systemd/system/vantage-agent.service.d
printf '[Service]\nWatchdogSec=5\nTimeoutAbortSec=5\n' >/etc/systemd/system/vantage-agent.service.d/test-watchdog.conf
systemctl daemon-reload
systemctl start vantage-agent.service
old=$(prop MainPID)
restarts=$(prop NRestarts)
kill -STOP "$old"
restarted() {
  new=$(prop MainPID)
  [ "$new" != 0 ] && [ "$new" != "$old" ] && [ "$(systemctl is-active vantage-agent.service)" = active ]
}
if wait_for 60 restarted; then
  check watchdog ok "pid $old stopped, restarted as $new (NRestarts $restarts -> $(prop NRestarts)): $(journalctl -b -u vantage-agent --no-pager -o cat | grep -i watchdog | tail -n 1)"
else
  check watchdog fail "pid $old, now $(prop MainPID), $(systemctl is-active vantage-agent.service): $(journalctl -b -u vantage-agent --no-pager -o cat | tail -n 5 | tr '\n' ' ')"
fi
systemctl stop vantage-agent.service
