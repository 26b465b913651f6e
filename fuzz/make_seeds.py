#!/usr/bin/env python3
"""Writes the seed corpora of the packet, config and session fuzz targets (fuzz/corpus/<name>/).

Each seed is a small, meaningful input in its target's encoding: valid probe datagrams and ICMP
replies and errors, the config fixtures and examples, and ingest sessions as operation sequences
(ingest_session_fuzz.cpp's Input/Op encoding: change both together). Run it from anywhere; it
rewrites only the files it names, so regression seeds that fuzzing found stay.
"""
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


# ---- probe_packet: selector byte (bit 0 reply expected, bit 1 MTU-sized maximum), datagram ----

def probe(seq, sender, send_ns, size=64, flags=0, reply=(0, 0, 0, 0, 0), version=1, reserved=0):
    header = b"VNTP" + struct.pack("<BBH QQQ QQQ II", version, flags, reserved, seq, sender, send_ns, *reply)
    return header + bytes(i & 0xFF for i in range(size - len(header)))


def probe_seeds():
    write("probe_packet", "request", b"\x00" + probe(1, 0xA11CE, 123456789))
    write("probe_packet", "request-padded", b"\x02" + probe(7, 42, 1 << 40, size=200))
    write("probe_packet", "reply", b"\x01" + probe(9, 42, 1000, flags=1, reply=(2000, 2500, 0xB007, 3, 9)))
    write("probe_packet", "reply-kernel-rx", b"\x01" + probe(10, 42, 1000, flags=3, reply=(2000, 2100, 0xB007, 3, 10)))
    write("probe_packet", "reply-to-reflector", b"\x00" + probe(9, 42, 1000, flags=1, reply=(1, 2, 3, 4, 5)))
    write("probe_packet", "bad-version", b"\x00" + probe(1, 1, 1, version=2))
    write("probe_packet", "bad-reserved", b"\x00" + probe(1, 1, 1, reserved=1))
    write("probe_packet", "too-long", b"\x02" + probe(1, 1, 1, size=1500))
    write("probe_packet", "short", b"\x00" + probe(1, 1, 1)[:40])
    write("probe_packet", "foreign", b"\x00" + b"GET / HTTP/1.1\r\n\r\n")


# ---- icmp_packet: selector (bit 0 IPv6, bit 1 IP header, bit 2 id checked), id, cookie, packet ----

ID = 0x1234
COOKIE = 0x0123456789ABCDEF


def checksum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def echo(kind, seq, payload_size=56, with_checksum=True):
    payload = struct.pack("!QQQ", COOKIE, 1_700_000_000_000_000_000, 5 << 32)
    payload += bytes(i & 0xFF for i in range(24, payload_size))
    msg = struct.pack("!BBHHH", kind, 0, 0, ID, seq) + payload
    if with_checksum:
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    return msg


def ipv4(payload, src="192.0.2.1", dst="192.0.2.99"):
    a = bytes(int(x) for x in src.split("."))
    b = bytes(int(x) for x in dst.split("."))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 1, 0, a, b)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6_header(payload_len, dst=b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x07"):
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len, 58, 64, b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01", dst)


def icmp_error(kind, code, quoted, v4=True):
    msg = struct.pack("!BBHI", kind, code, 0, 0) + quoted
    if v4:
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    return msg


# ---- stamp_packet: selector byte (bit 0 authenticated, bit 1 sender packet, as the reflector
# reads it), datagram (RFC 8762 layouts, RFC 8972 TLVs) ----

def stamp_sender(seq, auth=False, tlvs=b""):
    if auth:
        base = struct.pack("!I12xQHH68x", seq, 0xE0000000_80000000, 0x8001, 7) + bytes(range(16))
    else:
        base = struct.pack("!IQHH28x", seq, 0xE0000000_80000000, 0x8001, 7)
    return base + tlvs


def stamp_reflector(seq, auth=False, tlvs=b"", size=None):
    if auth:
        base = struct.pack("!I12xQHH4xQ8xI12xQH6xB15x", seq, 2, 0x8001, 7, 1, seq, 3, 0x8001, 64) + bytes(16)
    else:
        base = struct.pack("!IQHHQIQH2xB3x", seq, 2, 0x8001, 7, 1, seq, 3, 0x8001, 64)
    data = base + tlvs
    return data if size is None else data[:size]


def stamp_seeds():
    cos = struct.pack("!BBH", 0x80, 4, 4) + struct.pack("!I", 46 << 26)
    unknown = struct.pack("!BBH", 0x80, 200, 3) + b"abc"
    overrun = struct.pack("!BBH", 0x80, 1, 400) + b"xx"
    write("stamp_packet", "sender", b"\x02" + stamp_sender(1))
    write("stamp_packet", "sender-tlvs", b"\x02" + stamp_sender(2, tlvs=cos + unknown))
    write("stamp_packet", "sender-overrun", b"\x02" + stamp_sender(3, tlvs=overrun))
    write("stamp_packet", "sender-auth", b"\x03" + stamp_sender(4, auth=True))
    write("stamp_packet", "sender-short", b"\x02" + stamp_sender(5)[:30])
    write("stamp_packet", "reflector", b"\x00" + stamp_reflector(1))
    write("stamp_packet", "reflector-tlvs", b"\x00" + stamp_reflector(2, tlvs=cos))
    write("stamp_packet", "reflector-twamp-light", b"\x00" + stamp_reflector(3, size=41))
    write("stamp_packet", "reflector-auth", b"\x01" + stamp_reflector(4, auth=True))


def icmp_seeds():
    prefix = lambda sel: bytes([sel]) + struct.pack("!HQ", ID, COOKIE)
    request_v4, request_v6 = echo(8, 77), echo(128, 77, with_checksum=False)
    write("icmp_packet", "v4-ping-reply", prefix(4) + echo(0, 77))
    write("icmp_packet", "v4-raw-reply", prefix(6) + ipv4(echo(0, 78)))
    write("icmp_packet", "v6-reply", prefix(5) + echo(129, 79, with_checksum=False))
    write("icmp_packet", "v4-raw-time-exceeded", prefix(2) + ipv4(icmp_error(11, 0, ipv4(request_v4)[:20 + 32])))
    write("icmp_packet", "v4-raw-unreachable", prefix(2) + ipv4(icmp_error(3, 1, ipv4(request_v4))))
    write("icmp_packet", "v4-short-quote", prefix(2) + ipv4(icmp_error(3, 3, ipv4(request_v4)[:28])))
    write("icmp_packet", "v6-unreachable", prefix(1) + icmp_error(1, 3, ipv6_header(len(request_v6)) + request_v6, False))
    write("icmp_packet", "v6-packet-too-big",
          prefix(1) + icmp_error(2, 0, ipv6_header(len(request_v6)) + request_v6[:40], False))
    write("icmp_packet", "v4-error-queue-quote", prefix(4) + request_v4)
    write("icmp_packet", "v4-redirect", prefix(2) + ipv4(icmp_error(5, 1, ipv4(request_v4))))


# ---- agent_config, collector_config: the fixtures and the shipped examples ----

def config_seeds():
    fixtures = os.path.join(ROOT, "tests", "fixtures", "config")
    for target in ("agent_config", "collector_config"):
        os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    for name in sorted(os.listdir(fixtures)):
        target = "agent_config" if name.startswith("agent_") else "collector_config"
        shutil.copyfile(os.path.join(fixtures, name), os.path.join(CORPUS, target, name))
    for target, name in (("agent_config", "agent.toml"), ("collector_config", "collector.toml")):
        shutil.copyfile(os.path.join(ROOT, "packaging", "examples", name), os.path.join(CORPUS, target, "example-" + name))


# ---- ingest_session: operations in ingest_session_fuzz.cpp's encoding ----

AUTH, HANDSHAKE_FAILED, HELLO, BATCH, ACK, RAW, STORED, WRITTEN, ADVANCE, TICK, CLOSE, REVOKE = range(12)
STORED_OK, DUPLICATE, FAILED = range(3)


def name(index_or_text, known):
    """A pick(): the index of a known name, or text after them."""
    if isinstance(index_or_text, int):
        return bytes([index_or_text])
    raw = index_or_text.encode("utf-8", "surrogateescape") if isinstance(index_or_text, str) else index_or_text
    return bytes([known, len(raw)]) + raw


def seq_bytes(seq):
    return bytes([seq]) if seq <= 8 else b"\x80" + struct.pack("<Q", seq)


def auth(agent=0, region=0, pop=0, resumed=False, full=False, cert_error=False):
    flags = (1 if resumed else 0) | (0 if full else 2)
    return bytes([AUTH, flags]) + name(agent, 3) + name(region, 3) + name(pop, 2) + bytes([7 if cert_error else 0])


def hello(agent=0, region=0, pop=0, version=0, arch=0, incarnation=None):
    out = bytes([HELLO]) + name(agent, 2) + name(region, 3) + name(pop, 2) + name(version, 1) + name(arch, 2)
    return out + (b"\x01" + incarnation if incarnation else b"\x00")


def batch(seq, agent=0, region=None, pop=None, targets=()):
    flags = (1 if region is not None else 0) | (2 if pop is not None else 0) | (len(targets) << 2)
    out = bytes([BATCH]) + name(agent, 2) + seq_bytes(seq) + bytes([flags])
    if region is not None:
        out += name(region, 2)
    if pop is not None:
        out += name(pop, 2)
    for t in targets:
        out += name(t, 2)
    return out


def stored(index, outcome=STORED_OK):
    """The outcome for the index-th batch the session accepted."""
    return bytes([STORED, 1, index, outcome])


def stored_seq(seq, outcome=STORED_OK):
    return bytes([STORED, 0]) + seq_bytes(seq) + bytes([outcome])


def advance(ms):
    return bytes([ADVANCE]) + struct.pack("<H", ms)


def raw(data):
    return bytes([RAW, len(data)]) + data


W = bytes([WRITTEN])


def session_seeds():
    open_ = auth() + hello()
    seeds = {
        "two-batches-acked": open_ + batch(1) + batch(2, targets=(0, 1)) + stored(0) + stored(1, DUPLICATE) + W + W,
        "outcomes-out-of-order": open_ + batch(1) + batch(2) + batch(3) + stored(2) + stored(0) + stored(1) + W * 3,
        "store-failed": open_ + batch(1) + batch(2) + stored(0, FAILED) + stored(1) + W + W,
        "same-seq-twice": open_ + batch(1) + batch(1) + stored_seq(1) + stored_seq(1) + W + W,
        "hello-wrong-agent": auth() + hello(agent=1) + batch(1) + W,
        "hello-region-not-served": auth(region=2) + hello(region=2) + W,
        "hello-other-region": auth() + hello(region=1) + W,
        "batch-before-hello": auth() + batch(1) + W,
        "second-hello": open_ + hello() + W,
        "batch-seq-zero": open_ + batch(0) + W,
        "batch-other-region": open_ + batch(1, region=1, pop=0) + W,
        "batch-big-seq": open_ + batch(1 << 63) + stored(0) + W,
        "idle-timeout": open_ + batch(1) + advance(6000) + TICK.to_bytes(1, "little") + stored(0),
        "handshake-timeout": advance(1500) + TICK.to_bytes(1, "little"),
        "handshake-failed": bytes([HANDSHAKE_FAILED]) + auth() + hello(),
        "slow-reader": open_ + b"".join(batch(k) + stored(k - 1) for k in range(1, 31)),
        "server-full": auth(full=True) + hello() + W,
        "no-identity": auth(agent=2) + hello() + W,
        "certificate-error": auth(cert_error=True) + W,
        "hostile-hello": auth() + hello(version="1.0\n<3>forged", arch=b"arm\xff") + W,
        "hostile-target": open_ + batch(1) + batch(2, targets=("evil\nline", 0)) + stored(0) + W + W,
        "garbage-after-hello": open_ + raw(b"\xff\xff\xff\x7f" + b"\x00" * 8) + W,
        "close-then-store": open_ + batch(1) + bytes([CLOSE]) + stored(0) + batch(2),
        "agent-sends-ack": open_ + bytes([ACK]) + seq_bytes(1) + W,
        "incarnation": auth() + hello(incarnation=bytes(range(1, 17))) + batch(1) + stored(0) + W,
        "revoked-mid-session": open_ + batch(1) + batch(2) + stored(0) + bytes([REVOKE]) + stored(1) + batch(3) + W * 3,
        "resumed": auth(resumed=True, region=1, pop=1) + hello(region=1, pop=1) + batch(5) + stored(0) + W,
    }
    for seed_name, data in seeds.items():
        write("ingest_session", seed_name, data)


if __name__ == "__main__":
    probe_seeds()
    stamp_seeds()
    icmp_seeds()
    config_seeds()
    session_seeds()
