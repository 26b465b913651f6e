#!/usr/bin/python3
"""The agent binary (--config) and the collector's target lists, end to end over real TLS on loopback.

A fake collector (Python's ssl, the dev PKI) takes the agent's Hello and sends TargetList
frames; flatc (from the schema) builds them and decodes what the agent sends. The agent starts
with a kept list from its spool directory, announces its version and reflector in Hello, applies
a new list (keeping it on disk first), adopts an unchanged target set without a restart, refuses
a bad list while the session goes on, ships batches that name the version they ran, keeps the
list merged through a reload (SIGHUP) and starts with it again after a restart.

Usage: mesh_list_cli.py --agent BIN --schema telemetry.fbs --pki dev-pki.sh [-- EMULATOR...]
Exit 77 (skipped) without flatc.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class Flat:
    def __init__(self, schema, work):
        self.schema = schema
        self.work = work
        self.n = 0

    def build(self, obj):
        self.n += 1
        src = os.path.join(self.work, f"msg{self.n}.json")
        with open(src, "w") as f:
            json.dump(obj, f)
        subprocess.run(["flatc", "-b", "-o", self.work, self.schema, src], check=True)
        with open(os.path.join(self.work, f"msg{self.n}.vnt"), "rb") as f:
            return f.read()

    def decode(self, data):
        self.n += 1
        src = os.path.join(self.work, f"in{self.n}.bin")
        with open(src, "wb") as f:
            f.write(data)
        subprocess.run(["flatc", "--json", "--strict-json", "--raw-binary", "--defaults-json", "-o", self.work,
                        self.schema, "--", src], check=True)
        with open(os.path.join(self.work, f"in{self.n}.json")) as f:
            return json.load(f)


def target_list(version, targets):
    return {"message_type": "TargetList", "message": {"version": version, "targets": targets}}


def udp(host, port, interval_ms=1000, **more):
    return dict({"host": host, "port": port, "protocol": "UdpEcho", "interval_ms": interval_ms}, **more)


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Collector:
    """One TLS connection: records every frame the agent sends, sends what it is told to."""

    def __init__(self, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(pki, "collector.crt"), os.path.join(pki, "collector.key"))
        self.ctx.load_verify_locations(os.path.join(pki, "ca.crt"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.frames = []
        self.lock = threading.Lock()
        self.conn = None
        self.connected = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        raw, _ = self.listener.accept()
        self.conn = self.ctx.wrap_socket(raw, server_side=True)
        self.connected.set()
        buf = b""
        while True:
            try:
                chunk = self.conn.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4:
                n = struct.unpack("<I", buf[:4])[0]
                if len(buf) < 4 + n:
                    break
                with self.lock:
                    self.frames.append(buf[4:4 + n])
                buf = buf[4 + n:]

    def send(self, flatbuffer):
        self.conn.sendall(struct.pack("<I", len(flatbuffer)) + flatbuffer)

    def count(self):
        with self.lock:
            return len(self.frames)


def wait_for(what, predicate, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("emulator", nargs="*")
    args = ap.parse_args()
    if shutil.which("flatc") is None:
        print("flatc not found: skipped")
        return 77

    work = tempfile.mkdtemp(prefix="vantage-mesh-")
    agent = None
    log = None
    try:
        flat = Flat(args.schema, work)
        pki = os.path.join(work, "pki")
        subprocess.run(["bash", args.pki, pki, "fra1-edge-07:eu-central:fra1"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spool = os.path.join(work, "spool")
        os.makedirs(spool)
        kept_path = os.path.join(spool, "target-list.vnt")
        echo = free_port(socket.SOCK_DGRAM)
        reflector = free_port(socket.SOCK_DGRAM)

        # The list kept by an earlier run: one of its three targets is also configured locally.
        kept = flat.build(target_list(7, [udp("127.0.0.1", echo), udp("127.0.0.2", echo), udp("::1", echo)]))
        with open(kept_path, "wb") as f:
            f.write(b"VNTLIST1" + struct.pack("<II", len(kept), crc32c(kept)) + kept)

        collector = Collector(pki)
        config = os.path.join(work, "agent.toml")
        with open(config, "w") as f:
            f.write(f"""
[identity]
agent_id = "fra1-edge-07"
region = "eu-central"
pop = "fra1"
[tls]
ca = "{pki}/ca.crt"
cert = "{pki}/fra1-edge-07.crt"
key = "{pki}/fra1-edge-07.key"
[[collectors]]
region = "eu-central"
addresses = ["127.0.0.1:{collector.port}"]
[delivery]
drain = 0
[spool]
dir = "{spool}"
[measurement]
report_interval = 1
load_interval = 0
[reflector]
bind = "127.0.0.1"
port = {reflector}
announce = ["[2001:db8::7]:{reflector}"]
[[targets]]
name = "local"
protocol = "udp"
host = "127.0.0.1"
port = {echo}
""")
        log = open(os.path.join(work, "agent.log"), "w+")
        command = args.emulator + [args.agent, "--config", config]
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

        def logged(text):
            log.seek(0)
            return text in log.read()

        wait_for("the kept list", lambda: logged("mesh list v7 from disk: 3 targets"))
        wait_for("the Hello", lambda: collector.count() >= 1)
        hello = flat.decode(collector.frames[0])
        assert hello["message_type"] == "Hello", hello
        h = hello["message"]
        assert h["target_list_version"] == 7, h
        assert h["capabilities"] & (1 << 5), h
        assert [r["port"] for r in h["reflectors"]] == [reflector], h
        assert h["reflectors"][0]["ip"] == [0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [7], h

        # A new list: kept on disk, then applied (local target + one from the list).
        new = flat.build(target_list(8, [udp("127.0.0.3", echo, 500, paths=2, pop="ams1", agent_id="ams1-edge-01"),
                                         udp("127.0.0.1", echo)]))
        collector.send(new)
        wait_for("v8 running", lambda: logged("mesh list v8 running: 2 targets (1 from the mesh list)"))
        with open(kept_path, "rb") as f:
            assert f.read()[16:] == new
        # The same targets under a new version: no restart.
        collector.send(flat.build(target_list(9, [udp("127.0.0.3", echo, 500, paths=2, pop="ams1",
                                                       agent_id="ams1-edge-01")])))
        wait_for("v9 adopted", lambda: logged("mesh list v9: same targets, adopted without a restart"))
        # A bad list is refused whole; the session goes on.
        collector.send(flat.build(target_list(10, [udp("127.0.0.3", echo, 0)])))
        wait_for("the refusal", lambda: logged("target list refused: TargetList.targets[0].interval_ms: 0"))
        with open(kept_path, "rb") as f:
            assert flat.decode(f.read()[16:])["message"]["version"] == 9

        # Batches keep coming on the same connection and name the version they ran.
        def versions():
            out = {}
            with collector.lock:
                frames = list(collector.frames[1:])
            for frame in frames:
                batch = flat.decode(frame)["message"]
                out[batch["self"]["target_list_version"]] = [s["target"] for s in batch.get("latency", [])]
            return out

        wait_for("a batch of v9", lambda: 9 in versions(), timeout=90)
        seen = versions()
        assert 7 in seen and 9 in seen, seen
        assert sorted(seen[7]) == sorted(["local", f"127.0.0.2:{echo}", f"[::1]:{echo}"]), seen
        # Another agent's reflector is named after its PoP and agent.
        assert sorted(seen[9]) == sorted(["local", "ams1/ams1-edge-01"]), seen
        log.seek(0)
        assert "collector 127.0.0.1" not in "".join(l for l in log if "connected to" not in l and "received" not in l
                                                      and "refused" not in l), "the session was interrupted"

        # A reload re-reads the file and keeps the list merged in.
        agent.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: logged("reload: configuration generation 2 running: 2 targets (1 from mesh list v9)"))
        agent.terminate()
        assert agent.wait(timeout=60) == 0

        # A restart (the collector away) starts with the list kept last.
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        wait_for("the kept v9", lambda: logged("mesh list v9 from disk: 1 targets"))
        agent.terminate()
        assert agent.wait(timeout=60) == 0
        agent = None
        print("ok: kept list v7 started, v8 applied and kept, v9 adopted, v10 refused, batches name their version, "
              "a reload keeps v9 merged, a restart starts with v9")
        return 0
    except AssertionError:
        if log is not None:
            log.seek(0)
            sys.stderr.write("agent's log:\n" + log.read())
        raise
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
