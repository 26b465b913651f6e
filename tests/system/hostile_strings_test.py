#!/usr/bin/env python3
"""Untrusted strings and hostile HTTP clients against a real collector on loopback, while a real
agent (a1) delivers throughout:

  refused      a peer holding a valid agent certificate sends Hellos and Batches whose strings break
               the rules (invalid UTF-8, overlongs, surrogates, C0/DEL/C1 control characters, names
               over their bound; in ids, region, PoP, version, targets, interface and sensor names).
               Each is refused with its reason in the Ack (a Batch's with its seq), counted by
               reason in /metrics, and stored nowhere. `promtool check metrics` passes before,
               during and after; the collector's log holds no raw control byte or invalid UTF-8 (a
               newline a peer sent never starts a line of its own).
  consume      a JetStream message with hostile strings (in the frame, in a header), as an older
               collector or anyone who may publish could leave it: `vantage-collector consume --db`
               prints it as invalid, escaped, and stores none of it, while a real agent's batches are.
  status-page  a real agent whose targets are named with quotes, </script>, markup, RTL marks and
               overrides and 4-byte UTF-8: /metrics passes promtool, /api/status carries the names,
               and headless Chromium renders them in the matrix as text, with no element injected.
  big-post     1 GiB POSTs to the HTTP port (curl streaming from /dev/zero without waiting for
               100-continue, and a client that sends a 1 GiB Content-Length body or request line):
               each is answered 405 or cut off, the collector's VmRSS stays within 16 MiB of where
               it was, and the agent's batches keep arriving during and after.

Frames are written with flatc from JSON (its --allow-non-utf8 takes \\xNN escapes), so any bytes
can go into any string. Run: hostile_strings_test.py --agent BIN --collector BIN --pki
tools/dev-pki.sh --flatc FLATC [--only NAME] [-- EMULATOR WORDS...]; 77 when a host program it
needs (promtool, chromium, curl, nats-server) is missing.
"""
import html.parser
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import harness
from harness import REGION, Skip, free_port, wait_for

SCHEMA = os.path.join(harness.TOP, "schemas", "telemetry.fbs")
RSS_SLACK_KIB = 16 * 1024


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers, r.read()


class World(harness.World):
    """A collector with HTTP, agent certificates for a1 (the steady agent), a2 (the hostile peer)
    and a3 (the agent with hostile-but-valid target names)."""

    def __init__(self, workdir, args):
        super().__init__(workdir, args, ["a1", "a2", "a3"])

    def start_collector(self, *extra):
        self.http_port = free_port()
        c = super().start_collector("--http", f"127.0.0.1:{self.http_port}", *extra, ready="http on")
        self.http = f"http://127.0.0.1:{self.http_port}"
        return c

    def metrics(self):
        status, headers, body = http_get(self.http + "/metrics")
        assert status == 200, status
        return body.decode("utf-8")  # strict: invalid UTF-8 would raise here already

    def promtool(self, when):
        """`promtool check metrics` on a scrape taken now; returns the scrape."""
        text = self.metrics()
        r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=60)
        problems = (r.stdout + r.stderr).decode(errors="replace")
        # promtool exits 3 for lint findings (naming advice), 1 for text that does not parse:
        # both fail here.
        assert r.returncode == 0, \
            f"promtool check metrics {when}: exit {r.returncode}: {problems[:2000]}"
        return text

    def batches(self, agent_id):
        return len(Store(self.db).seqs(agent_id))


class Store(harness.Store):
    def __init__(self, path):
        super().__init__(path, tolerant=True)


def need(program, package):
    path = shutil.which(program)
    if not path:
        raise Skip(f"no {program} (Debian package {package})")
    return path


# --- frames ----------------------------------------------------------------------------------------

def fb_string(value):
    """A JSON string literal for flatc: printable ASCII as is, everything else as \\xNN bytes (flatc
    takes them with --allow-non-utf8), so the frame carries exactly these bytes."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    out = []
    for b in value:
        if 0x20 <= b < 0x7f and b not in (0x22, 0x5c):
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def frame(world, message_type, fields):
    """One length-prefixed Frame: fields is {name: value}; bytes/str values are strings, lists
    and dicts are written as JSON of their own (their strings through fb_string)."""
    def value(v):
        if isinstance(v, (bytes, str)):
            return fb_string(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}": {value(x)}' for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)
    text = '{"message_type": "%s", "message": %s}' % (message_type, value(fields))
    world.frames = getattr(world, "frames", 0) + 1
    path = os.path.join(world.dir, f"frame-{world.frames}.json")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([world.args.flatc, "-b", "--allow-non-utf8", "-o", world.dir, SCHEMA, path],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"flatc: {r.stderr}\n{text[:500]}"
    with open(path[:-len(".json")] + ".vnt", "rb") as f:
        body = f.read()
    return struct.pack("<I", len(body)) + body


def hello(world, agent_id="a2", region=REGION, pop="a2", version="0.1.0", arch="amd64"):
    return frame(world, "Hello", {"protocol_version": 1, "agent_id": agent_id, "region": region, "pop": pop,
                                  "software_version": version, "arch": arch})


def batch(world, seq, target="ok-target", interface="eth0", sensor="thermal_zone0/x86_pkg_temp",
          agent_id="a2", region=REGION, pop="a2"):
    now = time.time_ns()
    return frame(world, "Batch", {
        "agent_id": agent_id, "seq": seq, "interval_start_ns": now - 1_000_000_000, "interval_end_ns": now,
        "region": region, "pop": pop,
        "latency": [{"target": "fine", "protocol": "UdpEcho", "sent": 10, "received": 10},
                    {"target": target, "protocol": "UdpEcho", "sent": 10, "received": 10}],
        "load": [{"time_ns": now, "arch": "amd64", "net": [{"name": interface}],
                  "temperatures": [{"sensor": sensor, "celsius": 40.0}]}],
    })


def _u32(b, at):
    return struct.unpack_from("<I", b, at)[0]


def _field(b, table, index):
    """Position of a table's field `index`, or None when absent (FlatBuffers vtable lookup)."""
    vtable = table - struct.unpack_from("<i", b, table)[0]
    size = struct.unpack_from("<H", b, vtable)[0]
    slot = 4 + 2 * index
    if slot >= size:
        return None
    off = struct.unpack_from("<H", b, vtable + slot)[0]
    return table + off if off else None


def parse_ack(body):
    """(seq, status, reason) of an Ack frame's FlatBuffer; status 0 stored, 1 rejected, 2 retry."""
    root = _u32(body, 0)
    kind = _field(body, root, 0)
    assert kind is not None and body[kind] == 3, f"not an Ack frame: {body[:32].hex()}"
    at = _field(body, root, 1)
    ack = at + _u32(body, at)
    seq_at, status_at, reason_at = (_field(body, ack, i) for i in range(3))
    seq = struct.unpack_from("<Q", body, seq_at)[0] if seq_at else 0
    status = body[status_at] if status_at else 0
    reason = ""
    if reason_at:
        s = reason_at + _u32(body, reason_at)
        reason = body[s + 4:s + 4 + _u32(body, s)].decode("utf-8")  # strict: the collector's reason is UTF-8
    return seq, status, reason


def tls_peer(world, cert="a2"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{world.pki}/ca.crt")
    ctx.check_hostname = False
    ctx.load_cert_chain(f"{world.pki}/{cert}.crt", f"{world.pki}/{cert}.key")
    raw = socket.create_connection(("127.0.0.1", world.port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def exchange(world, frames):
    """Sends the frames on a fresh session; returns every Ack until the collector closes."""
    conn = tls_peer(world)
    acks, buffer = [], b""
    try:
        conn.sendall(b"".join(frames))
        conn.settimeout(20)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            buffer += data
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    finally:
        conn.close()
    while len(buffer) >= 4 and len(buffer) >= 4 + _u32(buffer, 0):
        n = _u32(buffer, 0)
        acks.append(parse_ack(buffer[4:4 + n]))
        buffer = buffer[4 + n:]
    return acks


def rejects(text):
    """{reason: count} of vantage_collector_rejects_total in a scrape."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^vantage_collector_rejects_total\{reason="([a-z0-9_]+)"\} (\S+)$', text, re.M)}


def check_log_bytes(path, forged):
    """The log as bytes: valid UTF-8, no control byte but the line ends, no C1, no line that starts
    with text a peer put after a newline of its own."""
    with open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")  # strict
    bad = [(i, c) for i, c in enumerate(text)
           if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f or c in "\u202e\u2028\u2029"]
    assert not bad, f"raw control characters in the collector log at {bad[:5]}: " + \
        repr(text[max(0, bad[0][0] - 80):bad[0][0] + 40])
    for line in text.splitlines():
        body = re.sub(r"^<\d>[a-z-]+: ", "", line)
        assert not body.startswith(forged), f"a peer forged a log line: {line!r}"
    return len(data)


# --- scenarios -------------------------------------------------------------------------------------

def scenario_refused(world):
    """Hellos and Batches with hostile strings: refused with reasons, counted, never stored or raw."""
    need("promtool", "prometheus")
    world.start_collector()
    good = world.start_agent("a1", "--interval", "1", "--no-reflector", "--load-interval", "0.5")
    wait_for(lambda: world.batches("a1") >= 2, 60, "a1's first batches")
    world.promtool("before")
    forged = "FORGED-by-peer"
    long_name = "t" * 129
    hellos = {
        "agent id with a newline": (dict(agent_id=b"a2\n<3>vantage-collector: " + forged.encode()),
                                    "control_character", "Hello.agent_id", "control character U+000A"),
        "region with invalid UTF-8": (dict(region=b"eu-central\xff"), "invalid_utf8", "Hello.region",
                                      "invalid UTF-8 at byte 10"),
        "PoP with an overlong '/'": (dict(pop=b"a2\xc0\xaf"), "invalid_utf8", "Hello.pop", "invalid UTF-8"),
        "version with a C1 control": (dict(version=b"1.0\xc2\x9b31m"), "control_character",
                                      "Hello.software_version", "U+009B"),
        "arch with an escape sequence": (dict(arch=b"amd64\x1b[2J"), "control_character", "Hello.arch", "U+001B"),
        "version over its bound": (dict(version=b"v" * 65), "string_too_long", "Hello.software_version",
                                   "65 bytes, over the limit of 64"),
    }
    batches = {
        "target with a newline": (dict(target=b"evil\n" + forged.encode()), "control_character",
                                  "Batch.latency[1].target", "U+000A"),
        "target with a lone surrogate": (dict(target=b"x\xed\xa0\x80"), "invalid_utf8", "Batch.latency[1].target",
                                         "invalid UTF-8 at byte 1"),
        "target with 0xff": (dict(target=b"\xff\xfe"), "invalid_utf8", "Batch.latency[1].target", "invalid UTF-8"),
        "target past U+10FFFF": (dict(target=b"\xf4\x90\x80\x80"), "invalid_utf8", "Batch.latency[1].target",
                                 "invalid UTF-8"),
        "target with DEL": (dict(target=b"del\x7f"), "control_character", "Batch.latency[1].target", "U+007F"),
        "target over its bound": (dict(target=long_name), "string_too_long", "Batch.latency[1].target",
                                  "129 bytes, over the limit of 128"),
        "interface with a carriage return": (dict(interface=b"eth0\r" + forged.encode()), "control_character",
                                             "Batch.load[0].net[0].name", "U+000D"),
        "sensor with NUL": (dict(sensor=b"zone\x00x"), "control_character", "Batch.load[0].temperatures[0].sensor",
                            "U+0000"),
    }
    base = rejects(world.metrics())
    results = []
    expected_counts = {}
    for name, (fields, reason, field, rule) in hellos.items():
        acks = exchange(world, [hello(world, **fields), batch(world, 1)])
        assert len(acks) == 1, f"{name}: acks {acks}"
        seq, status, text = acks[0]
        assert status == 1 and seq == 0, f"{name}: {acks[0]}"
        assert text.startswith(field) and rule in text, f"{name}: reason {text!r}"
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
        results.append(name)
    world.promtool("during (after the Hellos)")
    seq = 100
    for name, (fields, reason, field, rule) in batches.items():
        seq += 10
        acks = exchange(world, [hello(world), batch(world, seq), batch(world, seq + 1, **fields),
                                batch(world, seq + 2)])
        refused = [a for a in acks if a[1] == 1]
        assert len(refused) == 1, f"{name}: acks {acks}"
        assert refused[0][0] == seq + 1, f"{name}: refused {refused[0]}, expected seq {seq + 1}"
        assert field in refused[0][2] and rule in refused[0][2], f"{name}: reason {refused[0][2]!r}"
        assert all(a[0] != seq + 2 for a in acks), f"{name}: a batch after the refused one was acked: {acks}"
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
        results.append(name)
    text = world.promtool("during (after the Batches)")

    seen = {}

    def counted():
        now = rejects(world.metrics())
        seen.update({r: now.get(r, 0) - base.get(r, 0) for r in now})
        return all(seen.get(r, 0) == n for r, n in expected_counts.items()) and now
    try:
        now = wait_for(counted, 20, f"rejects by reason {expected_counts}")
    except AssertionError as e:
        raise AssertionError(f"{e}; /metrics counted {seen}") from None
    # What was refused is nowhere: the store holds only a2's good batches (each batch before a
    # refused one), and no scrape or status shows a hostile name.
    stored = set(Store(world.db).seqs("a2"))
    assert not stored & {s + 1 for s in range(110, seq + 1, 10)}, f"a refused batch was stored: {sorted(stored)}"
    assert forged not in text and forged not in http_get(world.http + "/api/status")[2].decode()
    before = world.batches("a1")
    wait_for(lambda: world.batches("a1") >= before + 2, 60, "a1's batches after the hostile peer")
    world.promtool("after")
    assert good.stop() == 0
    world.collector.stop()
    size = check_log_bytes(world.collector.log_path, forged)
    counts = ", ".join(f"{r} +{int(now[r] - base.get(r, 0))}" for r in sorted(expected_counts))
    return (f"{len(results)} hostile frames refused with their reasons ({counts}); promtool passed before, "
            f"during and after; {size} log bytes, none raw; a1 stored {world.batches('a1')} batches meanwhile")


HOSTILE_NAMES = [
    '"q"</script><script>alert(1)</script>',
    "<img/src=x/onerror=alert(1)>&amp;",
    "\u200f\u05e9\u05dc\u05d5\u05dd\u202eevil\u202c",
    "\U0001F680\U0001F525-pop",
    "\u2066isolate\u2069\u200e'single'",
]


class TextOf(html.parser.HTMLParser):
    """Elements and the text inside each <th> of the dumped DOM."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []
        self.th = []
        self._in_th = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "th":
            self._in_th += 1
            self.th.append("")

    def handle_endtag(self, tag):
        if tag == "th" and self._in_th:
            self._in_th -= 1

    def handle_data(self, data):
        if self._in_th:
            self.th[-1] += data


def scenario_status_page(world):
    """A real agent's targets named with quotes, markup, bidi marks and emoji: rendered as text."""
    chromium = need("chromium", "chromium")
    need("promtool", "prometheus")
    world.start_collector()
    reflector = free_port()
    # One reflector on every loopback address; each target at its own (the prober takes an address
    # and port once).
    config = world.agent_config("a3", drain=5, reflector={"bind": "0.0.0.0", "port": reflector},
                                measurement={"report_interval": 1, "load_interval": 0.5})
    # The names as UTF-8 in TOML basic strings (harness.toml would write emoji as JSON's surrogate
    # pairs, which TOML does not take).
    with open(config, "a") as f:
        for i, n in enumerate(HOSTILE_NAMES):
            f.write(f"\n[[targets]]\nname = {json.dumps(n, ensure_ascii=False)}\nprotocol = \"udp\"\n"
                    f"host = \"127.0.0.{i + 1}\"\nport = {reflector}\nrate = 10\n")
    agent = world.spawn("agent-a3", [world.args.agent, "--config", config])

    def all_names():
        s = json.loads(http_get(world.http + "/api/status")[2].decode("utf-8"))
        return {c["dst"] for c in s["cells"]} >= set(HOSTILE_NAMES) and s
    wait_for(all_names, 90, "every hostile-but-valid name in /api/status")
    text = world.promtool("with hostile-but-valid names")
    for n in HOSTILE_NAMES:
        escaped = n.replace("\\", "\\\\").replace('"', '\\"')
        assert f'target="{escaped}"' in text, f"/metrics lacks {n!r}"
    raw = http_get(world.http + "/api/status")[2]
    assert b"</script>" not in raw and b"<img" not in raw, "the JSON carries a raw '<'"
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", f"--user-data-dir={world.dir}/chromium", "--virtual-time-budget=8000",
              "--run-all-compositor-stages-before-draw"]
    dom = subprocess.run(common + ["--dump-dom", world.http + "/"], capture_output=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = TextOf()
    page.feed(dom.stdout.decode("utf-8"))
    headers = set(page.th)
    missing = [n for n in HOSTILE_NAMES if n not in headers]
    assert not missing, f"names not rendered as text: {missing!r}; headers {sorted(headers)!r}"
    scripts = [t for t in page.tags if t[0] == "script"]
    injected = [t for t in page.tags if t[0] in ("img", "iframe", "object", "embed")]
    assert len(scripts) == 1 and not injected, f"elements injected by a name: {scripts + injected}"
    cells = [t for t in page.tags if t[0] == "td" and t[1].get("data-dst") in HOSTILE_NAMES]
    assert len(cells) == len(HOSTILE_NAMES), f"matrix cells for the names: {len(cells)}"
    agent.stop()
    return (f"{len(HOSTILE_NAMES)} names ({', '.join(ascii(n) for n in HOSTILE_NAMES)}) in /metrics (promtool "
            f"passes), /api/status and the rendered matrix as text; 1 script element, none injected")


def vm_rss_kib(proc):
    with open(f"/proc/{proc.p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stream_body(port, head, total, chunk=1 << 20):
    """Sends head, then up to `total` zero bytes; returns (bytes sent, the server's first answer
    line or '') once the server closes or everything is sent."""
    sent = 0
    answer = b""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(head)
        zeros = bytes(chunk)
        while sent < total:
            try:
                n = s.send(zeros[:min(chunk, total - sent)])
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break
            sent += n
        s.settimeout(5)
        try:
            while b"\r\n" not in answer:
                data = s.recv(4096)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    return sent, answer.split(b"\r\n")[0].decode(errors="replace")


def scenario_big_post(world):
    """1 GiB POSTs to the HTTP port: answered or cut off, RSS flat, ingest unaffected."""
    curl = need("curl", "curl")
    world.start_collector()
    good = world.start_agent("a1", "--interval", "0.5", "--no-reflector", "--load-interval", "0.5")
    wait_for(lambda: world.batches("a1") >= 3, 60, "a1's first batches")
    for _ in range(3):  # the HTTP side's threads and buffers exist before the baseline
        http_get(world.http + "/metrics")
        http_get(world.http + "/api/status")
    time.sleep(1)
    base = vm_rss_kib(world.collector)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], vm_rss_kib(world.collector))
            except (OSError, AssertionError):
                pass
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stored_before = world.batches("a1")
    results = []
    try:
        # curl streams 1 GiB from /dev/zero (no Expect: 100-continue, so the body comes at once).
        start = time.monotonic()
        r = subprocess.run(["bash", "-c", f"head -c 1G /dev/zero | {curl} -sS -o /dev/null -w '%{{http_code}}' "
                            f"-X POST -H 'Expect:' -H 'Content-Type: application/octet-stream' "
                            f"-T - {world.http}/metrics"], capture_output=True, text=True, timeout=300)
        results.append(f"curl: HTTP {r.stdout.strip() or '-'} after {time.monotonic() - start:.1f} s"
                       + (f" ({r.stderr.strip()[:80]})" if r.stderr.strip() else ""))
        assert r.stdout.strip() in ("405", "000"), f"curl: {r.stdout} {r.stderr}"
        # Content-Length 1 GiB, sent as fast as the server takes it, to each path, and request lines
        # that never end: again and again for a few seconds, so the agent's batches meet them.
        offered = rounds = 0
        answers = set()
        until = time.monotonic() + 6
        while time.monotonic() < until or rounds == 0:
            rounds += 1
            for path in ("/", "/metrics", "/api/status"):
                head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 30}\r\n\r\n").encode()
                sent, answer = stream_body(world.http_port, head, 1 << 30)
                assert answer.startswith("HTTP/1.1 405") or answer == "", f"POST {path}: {answer!r}"
                answers.add(answer or "closed")
                offered += 1 << 30
            sent, answer = stream_body(world.http_port, b"GET /", 1 << 30)
            assert sent < 64 << 20, f"an endless request line was read for {sent >> 20} MiB"
            offered += 1 << 30
        results.append(f"{rounds} rounds of three 1 GiB POSTs and an endless request line ({offered >> 30} GiB "
                       f"offered; answers {sorted(answers)})")
    finally:
        done.set()
        sampler.join()
    # Ingest went on during all that and goes on after it; the HTTP side still answers.
    stored_during = world.batches("a1")
    assert stored_during > stored_before, f"no batch stored during the POSTs ({stored_before} -> {stored_during})"
    wait_for(lambda: world.batches("a1") >= stored_during + 3, 60, "a1's batches after the POSTs")
    assert http_get(world.http + "/metrics")[0] == 200
    after = vm_rss_kib(world.collector)
    growth = max(peak[0], after) - base
    assert growth <= RSS_SLACK_KIB, f"VmRSS grew {growth} KiB (base {base}, peak {peak[0]}, after {after})"
    m = world.metrics()
    refused = re.search(r'vantage_collector_http_refused_total\{limit="method"\} (\d+)', m)
    assert refused and int(refused.group(1)) >= 3, m[-1500:]
    assert good.stop() == 0
    return (f"{'; '.join(results)}; VmRSS {base} KiB before, peak {peak[0]}, after {after} (+{growth} KiB); "
            f"a1 stored {stored_before} -> {stored_during} during -> {world.batches('a1')} batches")


def nats_publish(port, subject, headers, payload):
    """One message with headers over NATS's text protocol (CONNECT, HPUB, PING/PONG to flush)."""
    head = "NATS/1.0\r\n".encode() + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":false}\r\n')
        s.sendall(f"HPUB {subject} {len(head)} {len(head) + len(payload)}\r\n".encode() + head + payload +
                  b"\r\nPING\r\n")
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            data = s.recv(4096)
            if not data:
                break
            answer += data
        assert b"-ERR" not in answer, answer


def scenario_consume(world):
    """A stream message with hostile strings (from an older collector, or anyone who may publish):
    `vantage-collector consume --db` prints it as invalid, escaped, and stores nothing of it."""
    nats = need("nats-server", "nats-server")
    nats_port = free_port()
    world.spawn("nats-server", [nats, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd",
                                os.path.join(world.dir, "jetstream")], emulate=False)
    url = f"nats://127.0.0.1:{nats_port}"
    wait_for(lambda: socket.create_connection(("127.0.0.1", nats_port), timeout=1).close() or True, 20,
             "nats-server")
    stream = "HOSTILE"
    collector = harness.World.start_collector(world, "--jetstream", url, "--stream", stream, db=False)
    agent = world.start_agent("a1", "--interval", "0.5", "--no-reflector", "--load-interval", "0")
    wait_for(lambda: "connected to collector" in agent.text(), 60, "a1's session")
    time.sleep(2)  # a few good batches in the stream first
    forged = "FORGED-by-publisher"
    body = batch(world, 7, target=b"evil\n" + forged.encode())[4:]
    nats_publish(nats_port, f"vantage.telemetry.{REGION}", [
        (b"Vantage-Agent", b"a2"), (b"Vantage-Region", REGION.encode()), (b"Vantage-Pop", b"a2"),
        (b"Vantage-Seq", b"7"), (b"Nats-Msg-Id", b"a2-hostile-7")], body)
    good = batch(world, 8)[4:]
    nats_publish(nats_port, f"vantage.telemetry.{REGION}", [
        (b"Vantage-Agent", b"a2\x1b[2J"), (b"Vantage-Region", REGION.encode()), (b"Vantage-Pop", b"a2"),
        (b"Vantage-Seq", b"8"), (b"Nats-Msg-Id", b"a2-hostile-8")], good)
    agent.stop()
    collector.stop()
    db = os.path.join(world.dir, "consumed.db")
    out = subprocess.run(world.args.emulator + [world.args.collector, "consume", "--jetstream", url, "--stream",
                                                 stream, "--timeout", "2000", "--db", db],
                         capture_output=True, timeout=120)
    text = out.stdout.decode("utf-8")  # strict
    invalid = [l for l in text.splitlines() if "INVALID strings" in l]
    assert len(invalid) == 2, f"consume: {out.returncode}\n{text[-3000:]}\n{out.stderr.decode(errors='replace')[-1000:]}"
    assert "Batch.latency[1].target" in invalid[0] and "control character U+000A" in invalid[0], invalid[0]
    assert "header Vantage-Agent" in invalid[1] and "U+001B" in invalid[1], invalid[1]
    assert not any(l.startswith(forged) for l in text.splitlines()) and "\x1b" not in text
    assert Store(db).seqs("a2") == [], "a hostile message was stored"
    good_rows = len(Store(db).seqs("a1"))
    assert good_rows > 0, "consume stored none of a1's batches"
    return f"2 hostile messages printed as invalid ({invalid[0][:90]}...); a1's {good_rows} batches stored"


SCENARIOS = {
    "refused": scenario_refused,
    "consume": scenario_consume,
    "status-page": scenario_status_page,
    "big-post": scenario_big_post,
}


def add_args(parser):
    parser.add_argument("--flatc", required=True, help="the host's flatc, to write hostile frames")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, World, add_args=add_args))
