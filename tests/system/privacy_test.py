#!/usr/bin/env python3
"""Client-IP pseudonymisation end to end: real agent and collector processes, TLS, SQLite, loopback.

Agents probe client targets at a distinctive loopback address (CLIENT, which Linux routes to lo)
with a reflector on 0.0.0.0 answering them, ship to a real collector, go through a reload and a
client target that never answers, and print --once reports. Afterwards the raw address, as text
and as its four bytes, must be nowhere: not in any spool file (the spool holds the exact frames),
the agents' and the collector's logs, the --once output, the SQLite store or its WAL. The
pseudonyms must be in the store, each the HMAC that Python's hmac module computes for its
interval's epoch, and prefix mode must store CLIENT's /24.
Run: privacy_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [-- EMULATOR WORDS...].
"""
import glob
import hashlib
import hmac
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import harness
from harness import REGION, assert_complete, free_port, wait_for

CLIENT = "127.31.41.59"
CLIENT_BYTES = socket.inet_aton(CLIENT)
SECRET_HEX = "5e" * 16 + "c7" * 16  # 32 bytes
ROTATION = 4  # seconds: a run of some 15 s crosses several epochs


def pseudonym(epoch, proto, port):
    """What every agent with SECRET_HEX calls CLIENT in an epoch (independent of mbedTLS)."""
    secret = bytes.fromhex(SECRET_HEX)
    key = hmac.new(secret, b"vantage-pseudonym-v1" + struct.pack(">Q", epoch), hashlib.sha256).digest()
    digest = hmac.new(key, CLIENT_BYTES + bytes([proto]) + struct.pack(">H", port), hashlib.sha256).hexdigest()
    return f"anon:k{epoch}:{digest[:24]}"


class TcpListener:
    """Accepts (and closes) the TCP client target's connects at CLIENT."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((CLIENT, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


def icmp_usable(world):
    # Raw ICMP needs root (ping_group_range is off on these machines); under the emulator the
    # ICMP prober's socket options are not all emulated, so ICMP runs natively only.
    return os.geteuid() == 0 and not world.args.emulator


def write_config(world, agent, mode, reflector, dead, tcp_port, icmp):
    """The agent's config file: a reflector on 0.0.0.0 answering a "self" target and a client
    target at CLIENT, a dead and a TCP client target (and an ICMP one) at CLIENT, `mode` privacy."""
    measurement = {"report_interval": 0.3, "load_interval": 0.1}
    client = {"host": CLIENT, "client": True}
    targets = [{"name": "self", "protocol": "udp", "host": "127.0.0.1", "port": reflector, "rate": 10},
               {"protocol": "udp", "port": reflector, "rate": 10, **client},
               {"protocol": "udp", "port": dead, "rate": 5, "timeout_ms": 100, **client},
               {"protocol": "tcp", "port": tcp_port, "rate": 5, **client}]
    if icmp:
        measurement["icmp_socket"] = "raw"
        targets.append({"protocol": "icmp", "rate": 5, **client})
    return world.agent_config(agent, reflector={"bind": "0.0.0.0", "port": reflector},
                              privacy={"mode": mode, "key_file": os.path.join(world.dir, "secret.hex"),
                                       "rotation": ROTATION},
                              measurement=measurement, targets=targets)


def leaks(paths):
    """(path, form) for every file that holds CLIENT as text or as its four bytes."""
    found = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        for form, needle in (("text", CLIENT.encode()), ("bytes", CLIENT_BYTES)):
            if needle in data:
                found.append((path, form, data.index(needle)))
    return found


class SpoolWatcher:
    """Reads every spool file every 0.1 s while the agents run: acked segments are deleted, so the
    frames must be looked at while they are there."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.found = []
        self.files = set()
        self.reads = 0
        self.bytes = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def scan(self):
        for path in glob.glob(self.pattern, recursive=True):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except (IsADirectoryError, FileNotFoundError):
                continue
            self.files.add(path)
            self.reads += 1
            self.bytes += len(data)
            for form, needle in (("text", CLIENT.encode()), ("bytes", CLIENT_BYTES)):
                if needle in data:
                    self.found.append((path, form, data.index(needle)))

    def run(self):
        while not self.stopped:
            self.scan()
            time.sleep(0.1)

    def stop(self):
        self.stopped = True
        self.thread.join()
        self.scan()


def scenario(world):
    # Private to its owner: the agent refuses a group- or world-readable secret.
    fd = os.open(os.path.join(world.dir, "secret.hex"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(SECRET_HEX + "\n")
    world.start_collector()
    tcp = TcpListener()
    spools = SpoolWatcher(os.path.join(world.dir, "spool-*", "**"))
    icmp = icmp_usable(world)
    dead = free_port()
    try:
        # a1: HMAC pseudonyms, a reload half way through.
        r1 = free_port()
        config1 = write_config(world, "a1", "hmac", r1, dead, tcp.port, icmp)
        a1 = world.spawn("agent-a1", [world.args.agent, "--config", config1])
        # a2: prefix mode.
        r2 = free_port()
        config2 = write_config(world, "a2", "prefix", r2, dead, tcp.port, False)
        a2 = world.spawn("agent-a2", [world.args.agent, "--config", config2])

        answered = "SELECT count(*) FROM latency_summaries WHERE agent_id = ? AND protocol = ? AND target LIKE ? " \
                   "AND received > 0"
        wait_for(lambda: world.scalar(answered, "a1", "udp_echo", "anon:k%") >= 5, 60, "a1's answered client probes")
        a1.signal(signal.SIGHUP)
        wait_for(lambda: "generation 2 running" in a1.text(), 30, "a1's reload")
        # Long enough to cross epochs after the reload.
        time.sleep(2 * ROTATION + 1)
        wait_for(lambda: world.scalar(answered, "a2", "udp_echo", f"{CLIENT[:CLIENT.rindex('.')]}.0/24:%") >= 3, 60,
                    "a2's answered client probes")

        # --once, table and JSON: the output an operator pastes into a ticket.
        once_out = os.path.join(world.dir, "once.out")
        with open(once_out, "wb") as out:
            for fmt in ([], ["--json"]):
                subprocess.run(world.args.emulator + [world.args.agent, "--once", "1.5", "--interval", "0.5", *fmt,
                                                      "--reflector", f"0.0.0.0:{free_port()}",
                                                      "--privacy-key", os.path.join(world.dir, "secret.hex"),
                                                      "--privacy-rotation", str(ROTATION), "--client", "--udp",
                                                      f"{CLIENT}:{dead}", "--tcp", f"{CLIENT}:{tcp.port}",
                                                      "--timeout", "100"],
                               stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60, cwd=world.dir)
        with open(once_out) as f:
            once_text = f.read()
        assert "anon:k" in once_text, once_text

        # The store while the collector runs: the WAL exists now.
        store_files = [world.db] + [p for p in (world.db + "-wal",) if os.path.exists(p)]
        live_leaks = leaks(store_files)

        assert a1.stop() == 0 and a2.stop() == 0
        spools.stop()
        n1 = assert_complete(world, a1, "a1")
        n2 = assert_complete(world, a2, "a2")
        spool_files = [p for p in glob.glob(os.path.join(world.dir, "spool-*", "**"), recursive=True)
                       if os.path.isfile(p)]
        world.collector.stop()
        store_files += [p for p in (world.db + "-wal",) if os.path.exists(p) and p not in store_files]
    finally:
        tcp.stop()
        spools.stopped = True

    # Every pseudonym a1 stored is the HMAC for its interval's epoch; the epochs rotate.
    rows = world.rows("SELECT target, protocol, interval_start_ns, received, sent FROM latency_summaries "
                      "WHERE agent_id = 'a1' AND target != 'self'")
    protos = {"udp_echo": 17, "tcp_connect": 6, "icmp": 1}
    ports = {}
    epochs = set()
    for target, protocol, start_ns, _, _ in rows:
        epoch = start_ns // 10**9 // ROTATION
        candidates = {pseudonym(epoch, protos[protocol], 0 if protocol == "icmp" else p)
                      for p in (r1, dead, tcp.port)}
        assert target in candidates, f"a1 stored {target!r} ({protocol}, epoch {epoch}), not a pseudonym of it"
        epochs.add(epoch)
        ports.setdefault(protocol, set()).add(target)
    assert len(epochs) >= 3, f"a1's pseudonyms span {len(epochs)} epochs of {ROTATION} s"
    udp_answered = world.scalar(answered, "a1", "udp_echo", "anon:k%")
    udp_dead = world.rows("SELECT sum(sent), sum(received) FROM latency_summaries WHERE agent_id = 'a1' AND "
                            "target IN (%s)" % ",".join("?" * len(epochs)),
                            *[pseudonym(e, 17, dead) for e in epochs])
    tcp_ok = world.scalar(answered, "a1", "tcp_connect", "anon:k%")
    assert tcp_ok > 0, "the TCP client target's connects never reached the store"
    icmp_ok = world.scalar(answered, "a1", "icmp", "anon:k%") if icmp else None
    if icmp:
        assert icmp_ok > 0, "the ICMP client target's echoes never reached the store"
    prefix = world.rows("SELECT DISTINCT target FROM latency_summaries WHERE agent_id = 'a2' AND target != 'self'")
    prefixes = sorted(t for (t,) in prefix)
    assert prefixes == sorted({f"127.31.41.0/24:{r2}", f"127.31.41.0/24:{dead}", f"127.31.41.0/24:{tcp.port}"}), \
        prefixes

    logs = [p.log_path for p in world.procs]
    checked = spool_files + logs + [once_out] + store_files
    found = live_leaks + spools.found + leaks(checked)
    assert not found, f"{CLIENT} leaked: {found}"
    assert spool_files and spools.files, "no spool files to check"
    # The check itself finds both forms: the config file names the client, a frame of raw bytes would.
    control = os.path.join(world.dir, "control.bin")
    with open(control, "wb") as f:
        f.write(b"\x00" * 100 + CLIENT_BYTES + b"\x00" * 100)
    assert [form for _, form, _ in leaks([config1, control])] == ["text", "bytes"], "the leak check is blind"
    return (f"a1 (hmac, rotation {ROTATION} s, reloaded) delivered 1..{n1}, a2 (prefix) 1..{n2}; a1's "
            f"{len(rows)} client summaries are the HMAC pseudonyms of {len(epochs)} epochs "
            f"({udp_answered} answered UDP, {tcp_ok} TCP, {'ICMP ' + str(icmp_ok) if icmp else 'no ICMP'}, "
            f"dead UDP target sent/received {udp_dead}); a2 stored {prefixes}; {CLIENT} as text and as bytes "
            f"in none of {len(checked)} files ({len(spool_files)} spool at the end, {len(logs)} logs, --once "
            f"output, {len(store_files)} store files) nor in {len(spools.files)} spool files read "
            f"{spools.reads} times ({spools.bytes >> 10} KiB) during the run")


if __name__ == "__main__":
    sys.exit(harness.main({"privacy": scenario},
                          lambda workdir, args: harness.World(workdir, args, [f"a1:{REGION}", f"a2:{REGION}"])))
