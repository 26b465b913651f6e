#!/usr/bin/env python3
"""Late DNS with real processes: an agent whose target and collector names do not resolve at
start runs under a stand-in service manager (NOTIFY_SOCKET, WATCHDOG_USEC, as notify_test.py) and
must be active there: READY=1 and WATCHDOG=1 pings while nothing resolves. Its /etc/hosts and
/etc/resolv.conf are private bind mounts (unshare --mount, so nothing outside the test changes):
the name server is a loopback socket that never answers, so every DNS lookup hangs for the
resolver's timeout (the watchdog must not notice), and /etc/hosts is rewritten in place, as glibc
reads it on every lookup: first the collector's name appears (batches flow, and the collector's
/metrics shows the target unresolved, not lost), then the target's (probes flow, RTTs are
stored); then the target's name goes away and comes back. Names resolve only to loopback. The
agent logs each change once. collector-moves: a collector name that points where nothing listens
and then moves is followed at once, as a failed connect looks the name up again.
Skipped (77) where a private mount namespace cannot be made (not root, no CAP_SYS_ADMIN).
Run: late_dns_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [-- EMULATOR WORDS...]
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import harness
from harness import free_port
from notify_test import Manager

TARGET = "pop2.vantage-test.invalid"
COLLECTOR = "collector.vantage-test.invalid"
BASE_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
# A name server on loopback that reads queries and never answers: each lookup of a name that is
# not in /etc/hosts waits out the timeout.
SILENT_DNS = "127.77.0.53"
RESOLV = f"nameserver {SILENT_DNS}\noptions timeout:3 attempts:1\n"
# Runs "$@" with $0 over /etc/hosts and $1 over /etc/resolv.conf, in the caller's new mount namespace.
PRIVATE_ETC = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'


def private_etc_possible(hosts, resolv):
    """True when `unshare --mount` can bind files over /etc/hosts and /etc/resolv.conf here (and
    only in there)."""
    try:
        out = subprocess.run(["unshare", "--mount", "--", "sh", "-c", PRIVATE_ETC, hosts, resolv, "cat", "/etc/hosts",
                              "/etc/resolv.conf"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout == BASE_HOSTS + RESOLV


def collector_cert(pki, name):
    """A collector certificate for `name` (the agent checks the collector's name against it), signed
    by the dev CA: pki/<cert>.crt and .key; returns the file stem."""
    stem = "collector-late"
    key, csr, crt, ext = (os.path.join(pki, f"{stem}.{e}") for e in ("key", "csr", "crt", "ext"))
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/O=Vantage/CN=vantage-collector", "-out", csr],
                   check=True, stdout=subprocess.DEVNULL)
    harness.write(ext, "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{name}\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(pki, "ca.crt"), "-CAkey",
                    os.path.join(pki, "ca.key"), "-sha256", "-days", "2", "-set_serial", "0x1d2c3b4a",
                    "-extfile", ext, "-out", crt], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return stem


class NameServer:
    """A name server on SILENT_DNS:53 (UDP): silent (queries read and dropped, so a lookup waits out
    the resolver's timeout) until nxdomain() makes it answer every query "no such name"."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SILENT_DNS, 53))
        self.sock.settimeout(0.1)
        self.queries = 0
        self.answer = False
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                query, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            if self.answer and len(query) >= 12:
                # The query's id and question back, with QR, RD, RA and rcode 3 (NXDOMAIN).
                self.sock.sendto(query[:2] + b"\x81\x83" + query[4:6] + b"\x00\x00" * 3 + query[12:], peer)

    def nxdomain(self):
        self.answer = True

    def close(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


def metric(body, name, target):
    """The value of name{..., target="target", ...} in a /metrics body, or None."""
    for line in body.splitlines():
        if line.startswith(name + "{") and f'target="{target}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def status_cell(url, target):
    """The /api/status matrix cell of `target`, or None."""
    cells = json.loads(urllib.request.urlopen(url, timeout=10).read().decode())["cells"]
    return next((c for c in cells if c["dst"] == target), None)


def scenario(world):
    hosts = harness.write(os.path.join(world.dir, "hosts"), BASE_HOSTS)
    resolv = harness.write(os.path.join(world.dir, "resolv.conf"), RESOLV)
    if not private_etc_possible(hosts, resolv):
        raise harness.Skip("cannot bind a private /etc/hosts (unshare --mount needs root or CAP_SYS_ADMIN)")
    try:
        dns = NameServer()
    except OSError as e:
        raise harness.Skip(f"cannot bind a name server on {SILENT_DNS}:53: {e}")
    try:
        return run(world, hosts, resolv, dns)
    finally:
        dns.close()


def run(world, hosts, resolv, dns):
    cert = collector_cert(world.pki, COLLECTOR)
    http_port = free_port()
    world.start_collector("--http", f"127.0.0.1:{http_port}", cert=cert, ready="http on")
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"

    reflector = free_port()
    label = f"{TARGET}:{reflector}"
    text = harness.agent_config(
        "fra1-late", [f"{COLLECTOR}:{world.port}"], f"{world.pki}/ca.crt", f"{world.pki}/fra1-late.crt",
        f"{world.pki}/fra1-late.key", os.path.join(world.dir, "spool"), drain=10,
        measurement={"report_interval": 1, "load_interval": 0.5, "dns_retry_max": 2, "dns_refresh": 5},
        reflector={"enabled": True, "bind": "127.0.0.1", "port": reflector},
        targets=[{"protocol": "udp", "host": TARGET, "port": reflector, "rate": 20}],
        log={"level": "info"})
    config = harness.write(os.path.join(world.dir, "agent.toml"), text)
    notify = os.path.join(world.dir, "notify")
    manager = Manager(notify)
    env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="2000000")
    # The bind mount lives in the agent's own mount namespace and ends with it.
    agent = world.spawn("agent", ["unshare", "--mount", "--", "sh", "-c", PRIVATE_ETC, hosts, resolv,
                                  *world.args.emulator, world.args.agent, "--config", config],
                        emulate=False, env=env)

    # Nothing resolves, and every lookup hangs: still READY, and the watchdog keeps being pinged.
    manager.wait_for(lambda m: m == "READY=1", 30, "READY=1 with nothing resolvable")
    manager.take()
    manager.pump(4)
    pings = [m for _, m in manager.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 2, f"only {len(pings)} WATCHDOG=1 in 4 s while DNS lookups hung"
    queries = dns.queries
    assert queries > 0, "the agent's lookups never reached the (silent) name server"
    agent.wait_log(f"{TARGET} does not resolve", 60)
    agent.wait_log(f"collector {COLLECTOR} does not resolve", 60)
    assert agent.alive(), "the agent exited while its names did not resolve"
    statuses = [m for _, m in manager.messages if m.startswith("STATUS=")]
    assert statuses and "1 targets (1 unresolved)" in statuses[-1] and "not connected" in statuses[-1], statuses[-2:]
    results = [f"active while {queries} DNS queries went unanswered ({len(pings)} pings in 4 s)"]

    # The collector's name appears: batches flow; the target is reported unresolved, not lost.
    with open(hosts, "r+") as f:  # in place: the bind mount holds this inode
        f.write(BASE_HOSTS + f"127.0.0.1 {COLLECTOR}\n")
    agent.wait_log(f"collector {COLLECTOR} resolves to 127.0.0.1", 60)
    harness.wait_for(lambda: world.scalar("SELECT count(*) FROM batches WHERE agent_id = 'fra1-late'") >= 2, 90,
                     "batches from the agent once the collector's name resolves")
    body = harness.wait_for(lambda: (lambda b: b if metric(b, "vantage_target_unresolved", label) == 1 else None)(
        urllib.request.urlopen(metrics_url, timeout=10).read().decode()), 60, "the target unresolved in /metrics")
    assert metric(body, "vantage_probes_lost", label) == 0, "an unresolved target was reported as loss"
    assert metric(body, "vantage_probes_sent", label) == 0, "an unresolved target was probed"
    status_url = f"http://127.0.0.1:{http_port}/api/status"
    cell = status_cell(status_url, label)
    assert cell and cell["unresolved"] is True and cell["lost"] == 0, f"/api/status cell: {cell}"
    lost = world.scalar("SELECT coalesce(sum(lost), 0) FROM latency_summaries WHERE target = ?", label)
    assert lost == 0, f"{lost} probes counted lost while the name did not resolve"
    results.append("collector resolved: batches stored, target unresolved (not lost) in /metrics and /api/status")

    # The target's name appears too: it is probed and its RTTs reach the store.
    with open(hosts, "r+") as f:
        f.write(BASE_HOSTS + f"127.0.0.1 {COLLECTOR}\n127.0.0.1 {TARGET}\n")
    agent.wait_log(f"{TARGET} resolves to 127.0.0.1", 60)
    harness.wait_for(lambda: world.scalar("SELECT count(*) FROM latency_summaries WHERE target = ? AND received > 0",
                                          label) >= 2, 90, "measured intervals of the late target in the store")
    harness.wait_for(lambda: metric(urllib.request.urlopen(metrics_url, timeout=10).read().decode(),
                                    "vantage_target_unresolved", label) == 0, 60, "the target resolved in /metrics")
    cell = status_cell(status_url, label)
    assert cell and cell["unresolved"] is False, f"/api/status cell: {cell}"
    received = world.scalar("SELECT sum(received) FROM latency_summaries WHERE target = ?", label)
    manager.take()
    manager.wait_for(lambda m: m == "WATCHDOG=1", 10, "WATCHDOG=1 after the names resolved")
    manager.wait_for(lambda m: m.startswith("STATUS=1 targets, connected"), 10, "STATUS without unresolved targets")
    results.append(f"target resolved: {received} replies stored")

    # The name leaves /etc/hosts while the name server stays silent: a lookup that times out says
    # nothing about the name, so the target keeps its address and is still measured.
    with open(hosts, "r+") as f:  # never empty meanwhile: the collector's name must stay
        f.write(BASE_HOSTS + f"127.0.0.1 {COLLECTOR}\n")
        f.truncate()
    before = dns.queries
    harness.wait_for(lambda: dns.queries > before, 30, "a refresh of the target's name reaching the name server")
    time.sleep(4)  # that lookup's timeout (3 s), and then some
    assert f"{TARGET} no longer resolves" not in agent.text(), "a timed-out lookup dropped the target's address"
    measured = world.scalar("SELECT coalesce(sum(received), 0) FROM latency_summaries WHERE target = ?", label)
    harness.wait_for(lambda: world.scalar("SELECT sum(received) FROM latency_summaries WHERE target = ?", label) >
                     measured, 60, "the target still measured while its lookups time out")
    # The name server now says the name does not exist: unresolved, logged once; then it returns.
    dns.nxdomain()
    agent.wait_log(f"{TARGET} no longer resolves", 60)
    with open(hosts, "r+") as f:
        f.write(BASE_HOSTS + f"127.0.0.1 {COLLECTOR}\n127.0.0.1 {TARGET}\n")
    harness.wait_for(lambda: len(re.findall(re.escape(f"{TARGET} resolves to 127.0.0.1"), agent.text())) == 2, 60,
                     "the target's name resolving again")
    results.append("kept its address while lookups timed out, unresolved on NXDOMAIN, resolved again")

    # Each change logged once, with the address where there is one.
    log = agent.text()
    for line, count in ((f"{TARGET} does not resolve", 1), (f"{TARGET} resolves to 127.0.0.1", 2),
                        (f"{TARGET} no longer resolves (", 1), (f"was 127.0.0.1); reported unresolved", 1),
                        (f"collector {COLLECTOR} does not resolve", 1),
                        (f"collector {COLLECTOR} resolves to 127.0.0.1", 1)):
        n = len(re.findall(re.escape(line), log))
        assert n == count, f"'{line}' logged {n} times, expected {count}"

    agent.signal(signal.SIGTERM)
    manager.wait_for(lambda m: m == "STOPPING=1", 10, "STOPPING=1")
    rc = agent.p.wait(timeout=60)
    assert rc == 0, f"exit code {rc}"
    results.append("each change logged once, exit 0")
    return ", ".join(results)


def collector_moves(world):
    """The collector's name first points where nothing listens (127.0.0.2: connects are refused),
    then moves to the collector (127.0.0.1). Names are refreshed only every 600 s here, so the agent
    finds the move in time only because a failed connect looks its collector's name up again."""
    hosts = harness.write(os.path.join(world.dir, "hosts"), BASE_HOSTS)
    resolv = harness.write(os.path.join(world.dir, "resolv.conf"), RESOLV)
    if not private_etc_possible(hosts, resolv):
        raise harness.Skip("cannot bind a private /etc/hosts (unshare --mount needs root or CAP_SYS_ADMIN)")
    with open(hosts, "a") as f:
        f.write(f"127.0.0.2 {COLLECTOR}\n")
    cert = collector_cert(world.pki, COLLECTOR)
    world.start_collector(cert=cert)
    reflector = free_port()
    text = harness.agent_config(
        "fra1-late", [f"{COLLECTOR}:{world.port}"], f"{world.pki}/ca.crt", f"{world.pki}/fra1-late.crt",
        f"{world.pki}/fra1-late.key", os.path.join(world.dir, "spool"), drain=10,
        measurement={"report_interval": 1, "load_interval": 0.5, "dns_retry_max": 2, "dns_refresh": 600},
        reflector={"enabled": True, "bind": "127.0.0.1", "port": reflector},
        targets=[{"protocol": "udp", "host": "127.0.0.1", "port": reflector, "rate": 5}],
        log={"level": "info"})
    config = harness.write(os.path.join(world.dir, "agent.toml"), text)
    agent = world.spawn("agent", ["unshare", "--mount", "--", "sh", "-c", PRIVATE_ETC, hosts, resolv,
                                  *world.args.emulator, world.args.agent, "--config", config], emulate=False)
    agent.wait_log(f"collector {COLLECTOR} resolves to 127.0.0.2", 60)
    agent.wait_log(f"collector {COLLECTOR}:{world.port}: connect to {COLLECTOR}:{world.port}", 60)
    with open(hosts, "r+") as f:  # in place: the bind mount holds this inode
        f.write(BASE_HOSTS + f"127.0.0.1 {COLLECTOR}\n")
        f.truncate()
    # Well within the 300..600 s a refresh would take: the next failed connect looks it up.
    agent.wait_log(f"collector {COLLECTOR} resolves to 127.0.0.1", 60)
    harness.wait_for(lambda: world.scalar("SELECT count(*) FROM batches WHERE agent_id = 'fra1-late'") >= 1, 60,
                     "batches from the agent once its collector's name moved")
    agent.signal(signal.SIGTERM)
    rc = agent.p.wait(timeout=60)
    assert rc == 0, f"exit code {rc}"
    return "a failed connect looked the collector's name up again: the move was found at once"


if __name__ == "__main__":
    sys.exit(harness.main({"late-dns": scenario, "collector-moves": collector_moves},
                          lambda workdir, args: harness.World(workdir, args, identities=["fra1-late"])))
