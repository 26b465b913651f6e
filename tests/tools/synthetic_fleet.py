#!/usr/bin/env python3
"""A synthetic fleet of N PoPs, each probing every other, delivered to a real collector the way
real agents deliver: one client certificate per PoP (binding vantage://REGION/POP/AGENT), a TLS
session, a Hello and length-prefixed FlatBuffers Batch frames (written with the host's flatc from
JSON), and every Ack read back. So the batches pass the same verification, store (SQLite) and live
view as an agent's, and the status page's matrix and /api/pair show them. No agent processes:
300 PoPs cost 300 short TLS sessions.

RTTs are deterministic: the PoPs sit on a seeded map, RTT grows with distance (1..~250 ms), a few
pairs lose packets. With --history-pops K the first K PoPs also send --history-minutes one-minute
batches before the newest one, for a drill-down of the last hour.

  synthetic_fleet.py --pki DIR --port PORT [--pops 300] [--region eu-central] [--flatc flatc]
                     [--history-pops 1] [--history-minutes 60] [--workdir DIR]

DIR must hold the dev PKI's CA (tools/dev-pki.sh DIR makes it); the PoPs' certificates are issued
there with openssl (all share one key: a test fleet, not a PKI) and kept for the next run.
Prints one JSON line: {"pops": [...], "stored": N, "seconds": S}. The PoP names are pop000...
"""
import argparse
import concurrent.futures
import json
import math
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(TOP, "schemas", "telemetry.fbs")


def pop_names(n):
    return [f"pop{i:03d}" for i in range(n)]


def agent_of(pop):
    return f"{pop}-edge-01"


def figures(pops, seed=17):
    """{(src, dst): (p50_ns, p99_ns, lost)} for every ordered pair, the same for a given seed."""
    rnd = random.Random(seed)
    where = {p: (rnd.uniform(0, 1), rnd.uniform(0, 1)) for p in pops}
    out = {}
    for a in pops:
        for b in pops:
            if a == b:
                continue
            d = math.dist(where[a], where[b])
            p50_ms = 1.0 + 180.0 * d + rnd.uniform(0, 2)
            lost = 3 if rnd.random() < 0.02 else 0
            out[(a, b)] = (int(p50_ms * 1e6), int(p50_ms * 1.25e6 + 2e6), lost)
    return out


def issue_certificates(pki, pops, region):
    """One certificate per PoP's agent, made once and kept; openssl 3's `req -CA` signs in one call."""
    key = os.path.join(pki, "synthetic-agent.key")
    if not os.path.exists(key):
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", key], check=True, capture_output=True)

    def issue(pop):
        agent = agent_of(pop)
        crt = os.path.join(pki, f"{agent}.crt")
        if os.path.exists(crt):
            return
        tmp = crt + ".tmp"
        subprocess.run(["openssl", "req", "-new", "-x509", "-key", key, "-CA", os.path.join(pki, "ca.crt"),
                        "-CAkey", os.path.join(pki, "ca.key"), "-sha256", "-days", "30",
                        "-subj", f"/O=Vantage/OU={region}/CN={agent}",
                        "-set_serial", "0x" + os.urandom(12).hex(),
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-addext", "keyUsage=critical,digitalSignature",
                        "-addext", "extendedKeyUsage=clientAuth",
                        "-addext", f"subjectAltName=URI:vantage://{region}/{pop}/{agent}",
                        "-out", tmp], check=True, capture_output=True)
        os.replace(tmp, crt)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(issue, pops))
    return key


def frame_json(message_type, message):
    return json.dumps({"message_type": message_type, "message": message})


def write_frames(flatc, workdir, pops, region, history_pops, history_minutes, now_ns):
    """{pop: [frame bytes, ...]}: a Hello, then the history batches (oldest first), then the newest."""
    table = figures(pops)
    os.makedirs(workdir, exist_ok=True)
    paths = {}
    for i, pop in enumerate(pops):
        agent = agent_of(pop)
        incarnation = list(os.urandom(16))
        names = [(f"{pop}-hello", frame_json("Hello", {
            "protocol_version": 1, "agent_id": agent, "region": region, "pop": pop,
            "software_version": "synthetic", "arch": "amd64", "incarnation": {"bytes": incarnation}}))]
        minutes = history_minutes if i < history_pops else 0
        for k in range(minutes + 1):
            end = now_ns - (minutes - k) * 60_000_000_000
            rnd = random.Random(f"{pop}/{k}")
            latency = []
            for other in pops:
                if other == pop:
                    continue
                p50, p99, lost = table[(pop, other)]
                wobble = 1.0 + (rnd.uniform(-0.15, 0.15) if k < minutes else 0.0)
                latency.append({"target": other, "protocol": "UdpEcho", "sent": 100, "received": 100 - lost,
                                "lost": lost, "min_ns": int(p50 * 0.9 * wobble), "max_ns": int(p99 * 1.1 * wobble),
                                "mean_ns": p50 * 1.02 * wobble, "p50_ns": int(p50 * wobble),
                                "p90_ns": int((p50 + p99) / 2 * wobble), "p99_ns": int(p99 * wobble),
                                "p999_ns": int(p99 * 1.05 * wobble)})
            names.append((f"{pop}-batch-{k + 1}", frame_json("Batch", {
                "agent_id": agent, "seq": k + 1, "interval_start_ns": end - 1_000_000_000,
                "interval_end_ns": end, "region": region, "pop": pop, "latency": latency})))
        paths[pop] = []
        for name, text in names:
            path = os.path.join(workdir, name + ".json")
            with open(path, "w") as f:
                f.write(text)
            paths[pop].append(path)
    every = [p for pop in pops for p in paths[pop]]
    for at in range(0, len(every), 200):  # one flatc per 200 files keeps the command line short
        r = subprocess.run([flatc, "-b", "-o", workdir, SCHEMA, *every[at:at + 200]], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"flatc: {r.stderr}")
    frames = {}
    for pop in pops:
        frames[pop] = []
        for path in paths[pop]:
            with open(path[:-len(".json")] + ".vnt", "rb") as f:
                body = f.read()
            frames[pop].append(struct.pack("<I", len(body)) + body)
    return frames


def _field(b, table, index):
    vtable = table - struct.unpack_from("<i", b, table)[0]
    size = struct.unpack_from("<H", b, vtable)[0]
    slot = 4 + 2 * index
    if slot >= size:
        return None
    off = struct.unpack_from("<H", b, vtable + slot)[0]
    return table + off if off else None


def parse_ack(body):
    """(seq, status) of an Ack frame: status 0 stored, 1 rejected, 2 retry later."""
    root = struct.unpack_from("<I", body, 0)[0]
    kind = _field(body, root, 0)
    if kind is None or body[kind] != 3:
        return None  # another message (a TargetList): not an Ack
    at = _field(body, root, 1)
    ack = at + struct.unpack_from("<I", body, at)[0]
    seq_at, status_at = _field(body, ack, 0), _field(body, ack, 1)
    return (struct.unpack_from("<Q", body, seq_at)[0] if seq_at else 0, body[status_at] if status_at else 0)


def deliver(pki, key, port, pop, frames, timeout=60):
    """One session: the frames, then Acks until every batch is acked as stored."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(pki, "ca.crt"))
    ctx.check_hostname = False
    ctx.load_cert_chain(os.path.join(pki, f"{agent_of(pop)}.crt"), key)
    want = len(frames) - 1
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout),
                         server_hostname="localhost") as conn:
        conn.sendall(b"".join(frames))
        buffer, stored = b"", set()
        deadline = time.monotonic() + timeout
        while len(stored) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pop}: {len(stored)} of {want} batches acked in {timeout} s")
            data = conn.recv(65536)
            if not data:
                raise RuntimeError(f"{pop}: the collector closed the session after {len(stored)} acks")
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from("<I", buffer, 0)[0]:
                n = struct.unpack_from("<I", buffer, 0)[0]
                ack = parse_ack(buffer[4:4 + n])
                buffer = buffer[4 + n:]
                if ack is None:
                    continue
                if ack[1] != 0:
                    raise RuntimeError(f"{pop}: batch {ack[0]} not stored (ack status {ack[1]})")
                stored.add(ack[0])
    return want


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pki", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pops", type=int, default=300)
    parser.add_argument("--region", default="eu-central")
    parser.add_argument("--flatc", default="flatc")
    parser.add_argument("--history-pops", type=int, default=1)
    parser.add_argument("--history-minutes", type=int, default=60)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--sessions", type=int, default=8, help="sessions delivering at once")
    args = parser.parse_args()
    started = time.monotonic()
    pops = pop_names(args.pops)
    workdir = args.workdir or os.path.join(args.pki, "synthetic-frames")
    key = issue_certificates(args.pki, pops, args.region)
    frames = write_frames(args.flatc, workdir, pops, args.region, args.history_pops, args.history_minutes,
                          time.time_ns())
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.sessions) as pool:
        stored = sum(pool.map(lambda p: deliver(args.pki, key, args.port, p, frames[p]), pops))
    print(json.dumps({"pops": pops, "stored": stored, "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    sys.exit(main())
