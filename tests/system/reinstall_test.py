#!/usr/bin/env python3
"""A reinstalled agent loses nothing: real processes, loopback only.

An agent ships batches 1..N and stops; its spool directory is deleted (a package purge, a new
disk, a re-imaged node); it starts again and ships 1..M from a new spool. The collector identifies
a batch by (agent, spool incarnation, seq), so the second 1..M are new batches, not duplicates of
the first: the store must hold all N + M, each once, under two incarnations.
- sqlite: a collector with its SQLite store; `vantage-collector query` shows the new incarnation.
- jetstream: a collector publishing into a `nats-server -js` stream whose duplicate window is 1 s;
  a copy of a batch republished after the window is kept by the stream (the window alone cannot
  dedupe), and `vantage-collector consume --db` still stores every batch exactly once.
Run: reinstall_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [--nats-server BIN]
[--only NAME] [-- EMULATOR WORDS...]
"""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import harness
from harness import REGION, Skip, free_port, stopped_line, wait_for

AGENT = "r1"
STREAM = "VANTAGE"
LEGACY = "0" * 32


class World(harness.World):
    def __init__(self, workdir, args):
        super().__init__(workdir, args, [f"{AGENT}:{REGION}"])
        self.spool = os.path.join(workdir, f"spool-{AGENT}")

    def start_agent(self, *extra):
        return super().start_agent(AGENT, "--no-reflector", "--interval", "0.3", "--load-interval", "0.1",
                                   "--drain", "20", *extra, spool=self.spool)

    def ship_and_stop(self, enough, count):
        """Starts the agent, waits until count() >= enough, stops it: (acked through, log text)."""
        agent = self.start_agent()
        wait_for(lambda: count() >= enough, 90, f"{enough} batches from {AGENT}", interval=0.2)
        assert agent.stop() == 0, f"{AGENT} did not stop cleanly"
        _, acked, left = stopped_line(agent)
        assert left == 0, f"{AGENT}: {left} batches still spooled at stop"
        return acked

    def reinstall(self):
        """What a purge and reinstall leaves: no spool at all."""
        assert os.path.isdir(self.spool), "the agent made no spool"
        shutil.rmtree(self.spool)


def check_two_incarnations(keys, n, m):
    """keys: [(incarnation hex, seq)] as held; the first incarnation 1..n, the second 1..m, once each."""
    assert len(keys) == len(set(keys)), f"a batch held twice: {len(keys)} rows, {len(set(keys))} distinct"
    by_incarnation = {}
    for incarnation, seq in keys:
        by_incarnation.setdefault(incarnation, []).append(seq)
    assert len(by_incarnation) == 2, f"expected two incarnations, got {sorted(by_incarnation)}"
    assert LEGACY not in by_incarnation, "a batch under the legacy (all zero) incarnation"
    held = sorted(sorted(s) for s in by_incarnation.values())
    assert sorted([list(range(1, n + 1)), list(range(1, m + 1))]) == held, \
        f"incarnations hold {[(s[0], s[-1], len(s)) for s in held]}, expected 1..{n} and 1..{m}"
    first = next(i for i, s in by_incarnation.items() if len(s) == n)
    second = next(i for i in by_incarnation if i != first)
    return first, second


def status_agent(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
        return next(a for a in json.load(r)["agents"] if a["agent"] == AGENT)


def scenario_sqlite(world):
    http_port = free_port()
    world.start_collector("--http", f"127.0.0.1:{http_port}")
    count = lambda: world.scalar("SELECT count(*) FROM batches WHERE agent_id = ?", AGENT)
    n = world.ship_and_stop(8, count)
    first = [r[0] for r in world.rows("SELECT DISTINCT incarnation FROM batches WHERE agent_id = ?", AGENT)]
    assert len(first) == 1 and first[0] != LEGACY and re.fullmatch(r"[0-9a-f]{32}", first[0]), first
    world.reinstall()
    # The old spool's seqs 1..n are all in the store: a reinstalled agent re-uses every one of them.
    m = world.ship_and_stop(n + 6, count)
    assert m >= 6, m
    keys = world.rows("SELECT incarnation, seq FROM batches WHERE agent_id = ?", AGENT)
    assert len(keys) == n + m, f"store holds {len(keys)} batches of {AGENT}, expected {n} + {m}"
    old, new = check_two_incarnations(keys, n, m)
    assert old == first[0], (old, first)
    # The same key twice never is: the collector's log names both incarnations, its store holds
    # every summary of the new ones (not dropped as duplicates of the old ones).
    log = world.collector.text()
    assert f"incarnation {old}" in log and f"incarnation {new}" in log, log[-2000:]
    with open(os.path.join(world.dir, f"agent-{AGENT}.log"), errors="replace") as f:
        agent_log = f.read()
    named = [agent_log.find(f"spool incarnation {i}") for i in (old, new)]
    assert 0 <= named[0] < named[1], f"the agent's log does not name its two spool incarnations in order: {named}"
    held = world.scalar("SELECT count(DISTINCT seq) FROM load_samples WHERE agent_id = ? AND incarnation = ?",
                        AGENT, new)
    assert held == m, f"load samples for {held} of the new incarnation's {m} batches"
    # What an operator sees: the agent's newest incarnation and its highest seq.
    out = subprocess.run(world.args.emulator + [world.args.collector, "query", "--db", world.db],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next((l for l in out.stdout.splitlines() if l.startswith(AGENT + " ") and new in l), None)
    assert line is not None, f"query does not show {AGENT} under {new}:\n{out.stdout}"
    batches, max_seq = map(int, line.split()[3:5])
    assert (batches, max_seq) == (n + m, m), line
    # The live view (status JSON, /metrics) follows the new incarnation although its seqs are lower.
    status = status_agent(http_port)
    assert (status["incarnation"], status["seq"]) == (new, m), status
    assert world.collector.stop() == 0
    return (f"{AGENT} shipped 1..{n}, spool deleted, shipped 1..{m}: the store holds all {n + m} once each, "
            f"under {old[:8]}.. and {new[:8]}..; query: {' '.join(line.split())}")


# --- a minimal NATS client (text protocol): JetStream API requests and raw republishing -----------

class Nats:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        assert self._line().startswith(b"INFO "), "nats-server did not greet"
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        self.next_inbox = 0

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("nats-server closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self, inbox):
        """The next message on inbox: (headers bytes, payload bytes); answers PINGs meanwhile."""
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise AssertionError(f"nats-server: {line.decode()}")
            elif line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                words = line.split()
                if words[0] == b"MSG":
                    payload, headers = self._take(int(words[-1])), b""
                else:
                    data = self._take(int(words[-1]))
                    headers, payload = data[:int(words[-2])], data[int(words[-2]):]
                if words[1].decode() == inbox:
                    return headers, payload

    def _inbox(self):
        self.next_inbox += 1
        inbox = f"_INBOX.reinstall.{self.next_inbox}"
        self.sock.sendall(f"SUB {inbox} {self.next_inbox}\r\n".encode())
        return inbox

    def request(self, subject, body):
        inbox = self._inbox()
        payload = json.dumps(body).encode()
        self.sock.sendall(f"PUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
        return json.loads(self._reply(inbox)[1])

    def publish_raw(self, subject, headers, payload):
        """HPUB with the header block as is; returns JetStream's PubAck."""
        inbox = self._inbox()
        self.sock.sendall(f"HPUB {subject} {inbox} {len(headers)} {len(headers) + len(payload)}\r\n".encode() +
                          headers + payload + b"\r\n")
        return json.loads(self._reply(inbox)[1])


class JetStreamWorld(World):
    def __init__(self, workdir, args):
        super().__init__(workdir, args)
        self.nats_port = free_port()
        self.url = f"nats://127.0.0.1:{self.nats_port}"

    def start_nats(self):
        self.spawn("nats-server", [self.args.nats_server, "-js", "-a", "127.0.0.1", "-p", str(self.nats_port),
                                   "-sd", os.path.join(self.dir, "jetstream")], emulate=False)
        return wait_for(lambda: Nats(self.nats_port), 20, "nats-server to answer")

    def consume(self, db):
        """`vantage-collector consume --db`: [(agent, incarnation, seq, store outcome)] in stream order."""
        # consume ends once caught up; the fetch timeout only has to outlast a slow (emulated) fetch.
        out = subprocess.run(self.args.emulator + [self.args.collector, "consume", "--jetstream", self.url,
                                                   "--stream", STREAM, "--timeout", "10000", "--db", db],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"consume exited {out.returncode}: {out.stderr[-2000:]}"
        rows = []
        for line in out.stdout.splitlines():
            m = re.match(r"stream_seq=\d+ agent=(\S+) region=\S+ pop=\S+ seq=(\d+) .* incarnation=([0-9a-f]{32}) "
                         r"store=(stored|duplicate)$", line)
            assert m, f"unexpected consume line: {line}"
            rows.append((m.group(1), m.group(3), int(m.group(2)), m.group(4)))
        return rows, out.stderr


def scenario_jetstream(world):
    nats = world.start_nats()
    # The stream exists before the collector (which then uses it as it is) with a 1 s duplicate
    # window: far shorter than any outage, so only the store's key can make delivery exactly once.
    created = nats.request(f"$JS.API.STREAM.CREATE.{STREAM}",
                           {"name": STREAM, "subjects": ["vantage.telemetry.>"], "storage": "file",
                            "num_replicas": 1, "duplicate_window": 1_000_000_000})
    assert "error" not in created, created
    world.start_collector("--jetstream", world.url, "--stream", STREAM, db=False)

    def count():
        info = nats.request(f"$JS.API.STREAM.INFO.{STREAM}", {})
        return info["state"]["messages"]

    n = world.ship_and_stop(8, count)
    world.reinstall()
    m = world.ship_and_stop(count() + 6, count)
    assert count() == n + m, f"stream holds {count()} messages, expected {n} + {m}"

    # A resend from beyond the window: the stream's first message published again, headers and
    # Nats-Msg-Id as the collector set them, as a collector would after an agent came back late.
    time.sleep(1.5)
    got = nats.request(f"$JS.API.STREAM.MSG.GET.{STREAM}", {"seq": 1})["message"]
    headers = base64.b64decode(got["hdrs"])
    assert b"Nats-Msg-Id: " + AGENT.encode() + b"/" in headers and b"Vantage-Incarnation: " in headers, headers
    ack = nats.publish_raw(got["subject"], headers, base64.b64decode(got["data"]))
    assert "error" not in ack and not ack.get("duplicate"), f"the window still held the id: {ack}"
    assert count() == n + m + 1

    db = os.path.join(world.dir, "consumed.db")
    rows, summary = world.consume(db)
    assert len(rows) == n + m + 1 and all(r[0] == AGENT for r in rows), summary
    dups = [r for r in rows if r[3] == "duplicate"]
    assert len(dups) == 1 and dups[0][2] == 1, f"expected one duplicate (seq 1), got {dups}"
    keys = harness.Store(db).rows("SELECT incarnation, seq FROM batches WHERE agent_id = ?", AGENT)
    assert len(keys) == n + m, f"the store holds {len(keys)} batches, expected {n} + {m}"
    old, new = check_two_incarnations(keys, n, m)
    # Consuming the whole stream again (a consumer restarted from the start) adds nothing.
    again, _ = world.consume(db)
    assert len(again) == n + m + 1 and all(r[3] == "duplicate" for r in again), again[:3]
    assert len(harness.Store(db).rows("SELECT 1 FROM batches")) == n + m
    return (f"{AGENT} shipped 1..{n}, spool deleted, shipped 1..{m} through JetStream; with a copy published "
            f"past the 1 s window the stream holds {n + m + 1}, the consumer's store {n + m} (once each, under "
            f"{old[:8]}.. and {new[:8]}..); a second full read stores nothing")


def make_world(workdir, args):
    # A JetStream world is a SQLite world plus a NATS port; without nats-server only sqlite runs.
    return JetStreamWorld(workdir, args) if args.nats_server else World(workdir, args)


def jetstream_or_skip(world):
    if not isinstance(world, JetStreamWorld):
        raise Skip("nats-server is not installed")
    return scenario_jetstream(world)


if __name__ == "__main__":
    sys.exit(harness.main({"sqlite": scenario_sqlite, "jetstream": jetstream_or_skip}, make_world,
                          add_args=lambda p: p.add_argument("--nats-server", default=shutil.which("nats-server"))))
