#!/usr/bin/env python3
"""Delivery end to end with real processes, real TLS and a real SQLite file, on loopback only.

Each scenario starts vantage-collector and vantage-agent processes (under the cross-compiling
emulator when one is given), disturbs them (kill -9, outages, a torn spool, bad peers) and then
checks the store: every batch an agent made is there exactly once, seqs 1..N with no gap and no
duplicate. Run: delivery_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [--only NAME]
[-- EMULATOR WORDS...].
"""
import glob
import os
import re
import signal
import socket
import ssl
import struct
import sys
import time
import harness
from harness import REGION, assert_complete, free_port, stopped_line, wait_for


class World(harness.World):
    """PKI for a1, a2 (eu-central), a3 (ap-south) and a1 under another CA; agents measuring nothing
    that report every 0.3 s."""

    def __init__(self, workdir, args):
        super().__init__(workdir, args, ["a1:eu-central", "a2:eu-central", "a3:ap-south"], other_ca=["a1:eu-central"])

    def start_agent(self, agent_id, cert=None, region=REGION, spool=None, extra=(), collector_host="127.0.0.1",
                    collectors=None):
        return super().start_agent(agent_id, "--no-reflector", "--interval", "0.3", "--load-interval", "0.1",
                                   "--drain", "20", *extra, cert=cert, region=region, spool=spool,
                                   collectors=collectors or [f"{collector_host}:{self.port}"])


def scenario_collector_kill9(world):
    """kill -9 the collector while two agents ship; restart it: nothing lost, nothing twice."""
    world.start_collector()
    a1 = world.start_agent("a1")
    a2 = world.start_agent("a2")
    wait_for(lambda: len(world.seqs("a1")) >= 5 and len(world.seqs("a2")) >= 5, 60, "batches from both agents")
    world.collector.kill9()
    time.sleep(2)
    world.start_collector()
    time.sleep(3)
    assert a1.stop() == 0 and a2.stop() == 0
    n1 = assert_complete(world, a1, "a1")
    n2 = assert_complete(world, a2, "a2")
    assert n1 >= 10 and n2 >= 10, (n1, n2)
    health = check_self_metrics(world, "a1", n1)
    world.collector.stop()
    return f"a1 seqs 1..{n1}, a2 seqs 1..{n2}, each exactly once across a collector kill -9; a1 {health}"


def check_self_metrics(world, agent_id, batches):
    """Every batch carried the agent's self-metrics, and they tell the story of a collector outage:
    one process, one configuration, CPU time that only grows, a spool that filled while the
    collector was away, a failed connect and a reconnect."""
    rows = world.rows("SELECT seq, process_start_ns, config_generation, rss_bytes, cpu_user_ns + cpu_system_ns, "
                      "spool_records, reconnects, connect_failures, tls_failures, rejected FROM agent_self "
                      "WHERE agent_id = ? ORDER BY seq", agent_id)
    assert [r[0] for r in rows] == list(range(1, batches + 1)), f"{agent_id}: self-metrics for {len(rows)} of {batches} batches"
    assert len({r[1] for r in rows}) == 1 and rows[0][1] > 1_600_000_000 * 10**9, "process_start_ns changed or is not wall time"
    assert all(r[2] == 1 for r in rows), "config generation is not 1"
    assert all(0 < r[3] < 4 << 30 for r in rows), f"implausible RSS {[r[3] for r in rows]}"
    cpu = [r[4] for r in rows]
    assert cpu == sorted(cpu) and cpu[-1] > 0, f"CPU time not cumulative: {cpu}"
    last = rows[-1]
    assert max(r[5] for r in rows) >= 2, "the spool never held a backlog during the outage"
    assert last[6] >= 1 and last[7] >= 1, f"reconnects {last[6]}, connect failures {last[7]} after a collector kill"
    assert last[8] == 0 and last[9] == 0, f"TLS failures {last[8]}, rejections {last[9]}"
    return (f"self-metrics in all {len(rows)} batches: RSS {last[3] >> 10} KiB, CPU {cpu[-1] / 1e6:.0f} ms, "
            f"spool peak {max(r[5] for r in rows)}, {last[6]} reconnects, {last[7]} failed connects")


def spooled_records(spool):
    """How many records the spool's segment files hold (each starts with its magic)."""
    n = 0
    for path in glob.glob(os.path.join(spool, "seg-*")):
        with open(path, "rb") as f:
            n += f.read().count(b"VSR1")
    return n


def spool_state(spool):
    """(next seq, acked seq, dropped-through seq, dropped count) from the spool's state file."""
    with open(os.path.join(spool, "state"), "rb") as f:
        b = f.read()
    assert len(b) == 44 and b[:4] == b"VSST", f"{spool}/state: {b!r}"
    return struct.unpack_from("<QQQQ", b, 8)


def scenario_outage_and_bound(world):
    """Collector away: the agent spools in bounded memory and delivers all when it is back; with a
    tiny spool the oldest are dropped and the drop count reaches the collector."""
    a1 = world.start_agent("a1")
    a2 = world.start_agent("a2", extra=("--spool-max-kb", "16"))
    # Memory is watched from when a1 runs its outage loop (batches spooled, connects refused):
    # start-up before that takes however long this machine (or an emulator) needs that day.
    spool1 = os.path.join(world.dir, "spool-a1")
    wait_for(lambda: spooled_records(spool1) >= 3 and a1.text().count("connect to") >= 2, 60,
             "a1 spooling while its collector is away")
    rss = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rss.append(a1.rss_kib())
        time.sleep(0.2)
    world.start_collector()
    wait_for(lambda: len(world.seqs("a1")) >= 20 and len(world.seqs("a2")) > 0, 60, "both agents' spooled batches")
    time.sleep(1)
    assert a1.stop() == 0 and a2.stop() == 0
    n1 = assert_complete(world, a1, "a1")
    # a2 dropped its oldest. The spool drops the oldest first, so what it dropped is exactly
    # 1..dropped-through. A batch sent before its drop may still have arrived (counted, and stored:
    # the count errs on the side of loss); on a machine too slow to send as fast as batches are made,
    # that happens window after window, so the stored seqs at or below dropped-through are scattered.
    # Above it the store holds every seq up to the last one acked: no batch is missing uncounted.
    seqs = world.seqs("a2")
    _, acked, left = stopped_line(a2)
    _, _, dropped_through, dropped_total = spool_state(os.path.join(world.dir, "spool-a2"))
    assert dropped_total == dropped_through, f"a2 dropped {dropped_total}, not 1..{dropped_through}"
    assert dropped_through >= 1, "a 16 KiB spool should have dropped the oldest batches"
    in_flight = [s for s in seqs if s <= dropped_through]
    assert left == 0 and seqs[len(in_flight):] == list(range(dropped_through + 1, acked + 1)), \
        (in_flight, seqs[len(in_flight):][:3], seqs[-3:], dropped_through, acked)
    missing = dropped_through - len(in_flight)
    dropped = world.scalar("SELECT max(spool_dropped) FROM batches WHERE agent_id = 'a2'")
    assert missing <= dropped <= dropped_total, \
        f"the batches report {dropped} dropped, {missing} are missing from the store, the spool dropped {dropped_total}"
    world.collector.stop()
    # The spool is on disk: memory must not grow with the outage. (The absolute figure depends on
    # the build: a sanitizer's shadow memory or an emulator's own footprint are counted too.)
    growth = max(rss) - rss[0]
    # ASan's quarantine holds freed memory for a while, so a sanitized agent grows without leaking.
    with open(world.args.agent, "rb") as f:
        sanitized = b"__asan_init" in f.read()
    allowed = 16384 if sanitized else 2048
    assert growth < allowed, f"agent RSS grew by {growth} KiB during the outage: {rss}"
    assert max(rss) < 128 * 1024, f"agent RSS {max(rss)} KiB during the outage"
    return (f"a1 spooled through the outage, delivered 1..{n1}, RSS peak {max(rss)} KiB, "
            f"growth over 5 s of it {growth} KiB; a2 (16 KiB spool) dropped the oldest {dropped_total} "
            f"({len(in_flight)} of them sent before their drop and stored) and delivered {dropped_through + 1}..{acked}; "
            f"its batches reported {dropped} dropped")


def scenario_agent_kill9(world):
    """kill -9 an agent while it ships, restart it (once more with its spool's tail torn): seq
    continues, the spool replays, nothing twice."""
    world.start_collector()
    spool = os.path.join(world.dir, "spool-a1")
    a1 = world.start_agent("a1", spool=spool)
    wait_for(lambda: len(world.seqs("a1")) >= 5, 60, "a1's first batches")
    a1.kill9()
    a1 = world.start_agent("a1", spool=spool)
    wait_for(lambda: len(world.seqs("a1")) >= 12, 60, "a1's batches after a restart")
    a1.kill9()
    # Tear the newest segment: half a header of garbage, as a write cut by a crash leaves it.
    # When every segment was acked and deleted, the torn write is the first of a new segment.
    segments = sorted(glob.glob(os.path.join(spool, "seg-*")))
    newest = segments[-1] if segments else os.path.join(spool, f"seg-{max(world.seqs('a1')) + 1:020d}.vsp")
    with open(newest, "ab") as f:
        f.write(b"VSR1\x40\x00\x00")
    a1 = world.start_agent("a1", spool=spool)
    wait_for(lambda: "spool:" in a1.text(), 30, "the spool's recovery warning")
    before = max(world.seqs("a1"))
    wait_for(lambda: max(world.seqs("a1")) >= before + 5, 60, "a1's batches after the torn restart")
    assert a1.stop() == 0
    n = assert_complete(world, a1, "a1")
    world.collector.stop()
    return f"a1 killed twice (once with a torn spool tail), store holds 1..{n} exactly once"


def tls_client(world, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{world.pki}/ca.crt")
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(f"{world.pki}/{cert}.crt", f"{world.pki}/{cert}.key")
    raw = socket.create_connection(("127.0.0.1", world.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def closed_by_server(conn, timeout=10):
    """True when the server ends the connection (EOF or reset) within the timeout."""
    conn.settimeout(timeout)
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def scenario_refusals(world):
    """Refused: no certificate, another CA's certificate, a Hello for another agent or region.
    Closed: garbage, a truncated frame, an over-limit length, an unverifiable frame, a stalled
    handshake. A well-behaved agent ships throughout, unaffected."""
    world.start_collector("--handshake-timeout", "1500", "--max-frame", "65536")
    good = world.start_agent("a2")
    wait_for(lambda: len(world.seqs("a2")) >= 3, 60, "a2's first batches")
    results = []

    # No client certificate: the handshake fails on the server's side.
    try:
        c = tls_client(world, None)
        assert closed_by_server(c), "a client without a certificate was not closed"
    except (ssl.SSLError, ConnectionResetError):
        pass
    results.append("no certificate")

    # A certificate from another CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{world.pki}/ca.crt")
    ctx.check_hostname = False
    ctx.load_cert_chain(f"{world.pki}/other-ca/a1.crt", f"{world.pki}/other-ca/a1.key")
    try:
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", world.port), timeout=10),
                            server_hostname="localhost")
        assert closed_by_server(c), "a certificate from another CA was accepted"
    except (ssl.SSLError, ConnectionResetError):
        pass
    results.append("another CA")

    # Hello claiming another agent (a1's certificate, a2's id) and a region not served.
    liar = world.start_agent("a2", cert="a1", spool=os.path.join(world.dir, "spool-liar"))
    foreign = world.start_agent("a3", region="ap-south")
    wait_for(lambda: "refused this agent" in liar.text() and "refused this agent" in foreign.text(), 30,
             "both refusals at the agents")
    assert "claims agent 'a2' but the certificate is for 'a1'" in world.collector.text()
    assert "region 'ap-south' is not served here" in world.collector.text()
    liar.stop()
    foreign.stop()
    results.append("another agent's id")
    results.append("another region")

    # Bad bytes over a real, authenticated TLS session: each closes that connection only.
    bad_streams = {
        "garbage": b"\xde\xad\xbe\xef" * 64,
        "over-limit length": struct.pack("<I", 1 << 20) + b"x" * 64,
        "zero length": struct.pack("<I", 0),
        "unverifiable frame": struct.pack("<I", 64) + b"\x00" * 64,
    }
    for name, payload in bad_streams.items():
        c = tls_client(world, "a1")
        c.sendall(payload)
        assert closed_by_server(c), f"{name}: connection not closed"
        results.append(name)
    # A truncated frame: the length promises more than ever comes; the idle timeout ends it
    # (and it never reaches the store).
    c = tls_client(world, "a1")
    c.sendall(struct.pack("<I", 1000) + b"\x10" * 10)
    c.close()
    results.append("truncated frame")

    # A peer that connects and never finishes the handshake.
    raw = socket.create_connection(("127.0.0.1", world.port), timeout=10)
    raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
    start = time.monotonic()
    assert closed_by_server(raw, timeout=10), "a stalled handshake was not closed"
    stalled = time.monotonic() - start
    results.append(f"stalled handshake (closed after {stalled:.1f} s)")

    assert world.seqs("a1") == [] and world.seqs("a3") == [], "a refused peer's data reached the store"
    time.sleep(1)
    assert good.stop() == 0
    n = assert_complete(world, good, "a2")
    world.collector.stop()
    # Refusals before authentication are peer-controlled: never a log line each, but one summary
    # per period, and the last one at shutdown.
    text = world.collector.text()
    assert "TLS handshake failed" not in text, "a line per refused handshake"
    summary = re.search(r"pre-authentication refusals in the last \d+ s: (\d+) \(handshake (\d+), timeout (\d+)", text)
    assert summary and int(summary.group(2)) >= 2 and int(summary.group(3)) >= 1, text[-1500:]
    results.append(f"one summary line for {summary.group(1)} refusals before authentication")
    return "refused/closed: " + ", ".join(results) + f"; a2 meanwhile delivered 1..{n} exactly once"


def scenario_dual_stack(world):
    """One collector listener on [::] serves agents arriving over IPv4 and over IPv6."""
    world.start_collector(listen=f"[::]:{world.port}")
    a1 = world.start_agent("a1", collector_host="127.0.0.1")
    a2 = world.start_agent("a2", collector_host="[::1]")
    wait_for(lambda: len(world.seqs("a1")) >= 3 and len(world.seqs("a2")) >= 3, 60, "batches over both families")
    assert a1.stop() == 0 and a2.stop() == 0
    n1 = assert_complete(world, a1, "a1")
    n2 = assert_complete(world, a2, "a2")
    text = world.collector.text()
    assert re.search(r"127\.0\.0\.1:\d+: agent a1", text) and re.search(r"\[::1\]:\d+: agent a2", text), text[-1500:]
    world.collector.stop()
    return f"listener [::]: a1 over IPv4 delivered 1..{n1}, a2 over IPv6 delivered 1..{n2}"


def scenario_failover_and_cap(world):
    """An agent whose first collector is down fails over to the next one; a collector at its
    connection cap turns a second agent away without disturbing the first."""
    world.start_collector("--max-sessions", "1")
    dead = f"127.0.0.1:{free_port()}"
    a1 = world.start_agent("a1", collectors=[dead, f"127.0.0.1:{world.port}"])
    wait_for(lambda: len(world.seqs("a1")) >= 3, 60, "a1's batches through its second collector")
    a2 = world.start_agent("a2")
    wait_for(lambda: "session limit (1) reached" in world.collector.text(), 30, "the session cap")
    time.sleep(1)
    assert world.seqs("a2") == [], "a second connection got past a cap of 1"
    assert a1.stop() == 0
    n1 = assert_complete(world, a1, "a1")
    assert f"connect to {dead}" in a1.text(), "a1 never tried its first collector"
    # With a1 gone there is room: a2 gets in and delivers everything it spooled meanwhile.
    wait_for(lambda: len(world.seqs("a2")) >= 3, 60, "a2 after a1 left")
    assert a2.stop() == 0
    n2 = assert_complete(world, a2, "a2")
    world.collector.stop()
    return f"a1 failed over from a dead address and delivered 1..{n1}; a2 was capped out, then delivered 1..{n2}"


def reload_config(world, target, reflector):
    """a1's config file: a reflector and one target on it named `target`."""
    return world.agent_config(
        "a1", reflector={"enabled": True, "bind": "127.0.0.1", "port": reflector},
        targets=[{"name": target, "protocol": "udp", "host": "127.0.0.1", "port": reflector, "rate": 10}],
        measurement={"report_interval": 0.3, "load_interval": 0.1})


def scenario_reload(world):
    """SIGHUP while shipping: the new targets are measured, the spool carries on (seq contiguous,
    nothing twice), and the batches' self-metrics move to config generation 2 in one process."""
    world.start_collector()
    reflector = free_port()
    config = reload_config(world, "before", reflector)
    a1 = world.spawn("agent-a1", [world.args.agent, "--config", config])
    wait_for(lambda: len(world.seqs("a1")) >= 5, 60, "a1's first batches")
    reload_config(world, "after", reflector)
    a1.signal(signal.SIGHUP)
    wait_for(lambda: world.scalar("SELECT count(*) FROM latency_summaries WHERE target = 'after' AND received > 0")
             >= 3, 60, "the reloaded target's summaries")
    assert a1.stop() == 0
    n = assert_complete(world, a1, "a1")
    targets = world.rows("SELECT l.seq, l.target, s.config_generation FROM latency_summaries AS l "
                         "JOIN agent_self AS s USING (agent_id, seq) WHERE agent_id = 'a1' ORDER BY l.seq")
    assert {t for _, t, _ in targets} == {"before", "after"}, targets
    # A batch measured a target of the configuration it was made under, and generations only rise.
    assert all(g == (1 if t == "before" else 2) for _, t, g in targets), targets
    gens = [r[0] for r in world.rows("SELECT config_generation FROM agent_self WHERE agent_id = 'a1' ORDER BY seq")]
    assert gens == sorted(gens) and gens[0] == 1 and gens[-1] == 2 and len(gens) == n, gens
    starts = world.rows("SELECT DISTINCT process_start_ns FROM agent_self WHERE agent_id = 'a1'")
    assert len(starts) == 1, f"one process, {len(starts)} start times"
    cpu = [r[0] for r in world.rows("SELECT cpu_user_ns + cpu_system_ns FROM agent_self WHERE agent_id = 'a1' "
                                    "ORDER BY seq")]
    assert cpu == sorted(cpu), "CPU time went back across the reload"
    reconnects = world.scalar("SELECT reconnects FROM agent_self WHERE agent_id = 'a1' ORDER BY seq DESC LIMIT 1")
    assert reconnects >= 1, "the reloaded shipper's session is not counted as a reconnect"
    world.collector.stop()
    return (f"reloaded after {gens.count(1)} batches; 1..{n} stored exactly once, {gens.count(2)} batches under "
            f"generation 2 measuring the new target, {reconnects} reconnect")


SCENARIOS = {
    "failover-and-cap": scenario_failover_and_cap,
    "dual-stack": scenario_dual_stack,
    "collector-kill9": scenario_collector_kill9,
    "outage-and-bound": scenario_outage_and_bound,
    "agent-kill9": scenario_agent_kill9,
    "refusals": scenario_refusals,
    "reload": scenario_reload,
}


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, World))
