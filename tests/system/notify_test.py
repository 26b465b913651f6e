#!/usr/bin/env python3
"""vantage-agent under a stand-in service manager: a real AF_UNIX datagram socket as NOTIFY_SOCKET
and WATCHDOG_USEC set, as systemd runs a Type=notify unit. Checks READY=1 once measuring, WATCHDOG=1
pings, STATUS=, SIGHUP -> RELOADING=1 with MONOTONIC_USEC then READY=1 with the new config (and the
old one kept when the new file is bad), SIGTERM -> STOPPING=1 and exit 0; and that a wedged agent
(SIGSTOP) stops pinging. Run: notify_test.py --agent BIN [-- EMULATOR WORDS...]
"""
import os
import signal
import socket
import sys
import time
import harness
from harness import free_port


def config(port, rate):
    """A reflector and a target on it, `rate` probes a second (a string makes the file invalid)."""
    return harness.toml({
        "measurement": {"report_interval": 1, "load_interval": 0.5},
        "reflector": {"enabled": True, "bind": "127.0.0.1", "port": port},
        "targets": [{"name": "self", "protocol": "udp", "host": "127.0.0.1", "port": port, "rate": rate}],
        "log": {"level": "info"}})


class Manager:
    """The service manager's end of NOTIFY_SOCKET: collects the datagrams."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages = []

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def wait_for(self, predicate, timeout, what):
        try:
            harness.wait_for(lambda: self.pump(0.1) or any(predicate(m) for _, m in self.messages), timeout, what,
                             interval=0)
        except AssertionError as e:
            raise AssertionError(f"{e}; got {[m for _, m in self.messages][-8:]}") from None

    def take(self):
        out, self.messages = self.messages, []
        return out


def scenario(world):
    port = free_port()
    path = harness.write(os.path.join(world.dir, "agent.toml"), config(port, 10))
    manager = Manager(os.path.join(world.dir, "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=os.path.join(world.dir, "notify"), WATCHDOG_USEC="2000000")
    # Under an emulator the agent's pid is the emulator's, which is the process systemd would
    # see too; WATCHDOG_PID is left unset so the check does not depend on it.
    p = world.spawn("agent", [world.args.agent, "--config", path], env=env)
    manager.wait_for(lambda m: m == "READY=1", 30, "READY=1")
    manager.wait_for(lambda m: m == "WATCHDOG=1", 10, "WATCHDOG=1")
    manager.wait_for(lambda m: m.startswith("STATUS=1 targets"), 10, "STATUS")
    results = ["READY=1", "WATCHDOG=1", "STATUS"]

    # A bad file on SIGHUP: RELOADING, then READY again with the old configuration.
    harness.write(path, config(port, "fast"))
    manager.take()
    p.signal(signal.SIGHUP)
    manager.wait_for(lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="), 10, "RELOADING=1")
    manager.wait_for(lambda m: m == "READY=1", 20, "READY=1 after a bad reload")
    manager.pump(1.5)
    statuses = [m for _, m in manager.messages if m.startswith("STATUS=")]
    assert statuses and statuses[-1].endswith("config generation 1"), statuses[-3:]
    reload_msg = [m for _, m in manager.messages if m.startswith("RELOADING=1")][0]
    usec = int(reload_msg.split("MONOTONIC_USEC=")[1])
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - usec < 60_000_000, (usec, now_usec)
    results.append("bad reload kept generation 1")

    # A good file: the new configuration runs as generation 2.
    harness.write(path, config(port, 20))
    manager.take()
    p.signal(signal.SIGHUP)
    manager.wait_for(lambda m: m.startswith("RELOADING=1"), 10, "RELOADING=1")
    manager.wait_for(lambda m: m == "READY=1", 20, "READY=1 after a good reload")
    manager.wait_for(lambda m: m.endswith("config generation 2"), 10, "generation 2 in STATUS")
    results.append("good reload -> generation 2")

    # Wedged: no WATCHDOG=1 while stopped (systemd would restart it after WatchdogSec).
    p.signal(signal.SIGSTOP)
    time.sleep(0.3)
    manager.take()
    manager.pump(3)
    assert not any(m == "WATCHDOG=1" for _, m in manager.messages), "a stopped agent kept pinging"
    p.signal(signal.SIGCONT)
    manager.wait_for(lambda m: m == "WATCHDOG=1", 10, "WATCHDOG=1 after SIGCONT")
    results.append("no pings while wedged")

    p.signal(signal.SIGTERM)
    manager.wait_for(lambda m: m == "STOPPING=1", 10, "STOPPING=1")
    rc = p.p.wait(timeout=30)
    assert rc == 0, f"exit code {rc}"
    results.append("STOPPING=1, exit 0")
    return ", ".join(results)


if __name__ == "__main__":
    sys.exit(harness.main({"notify": scenario}, lambda workdir, args: harness.World(workdir, args),
                          binaries=("agent",)))
