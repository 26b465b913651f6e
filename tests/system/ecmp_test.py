#!/usr/bin/env python3
"""ECMP path spreading with real processes on loopback: an agent probes its own reflector
through delay_relay.py with paths = 16 (its TOML [[targets]]), so its probes leave from 16
source ports; the relay drops everything from one of those ports (the 3rd it sees). A collector
with a SQLite store and --http receives the batches. The store's latency_paths rows must show
that port's path at ~100 % loss and the other 15 at none (a few probes lost to a busy machine
are tolerated), each path with its own source port, and the target's overall loss near 1/16;
/metrics must show vantage_path_loss_ratio near 1 for that path only.
Run: ecmp_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh --relay tests/tools/delay_relay.py
     [-- EMULATOR WORDS...]
"""
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import harness
from harness import REGION, free_port, wait_for

PATHS = 16
AGENT = "ecmp-edge-01"


class World(harness.World):
    def __init__(self, workdir, args):
        super().__init__(workdir, args, [f"{AGENT}:{REGION}:{AGENT}"])


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return r.read().decode()


def path_samples(text, name):
    """{path: value} of family `name` for the agent."""
    out = {}
    for m in re.finditer(rf'^{name}{{([^}}]*)}} (\S+)$', text, re.M):
        labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(1)))
        if labels.get("agent") == AGENT:
            out[int(labels["path"])] = float(m.group(2))
    return out


def spread(world):
    http_port = free_port()
    world.start_collector("--http", f"127.0.0.1:{http_port}", ready="http on")
    http = f"http://127.0.0.1:{http_port}"
    reflector, relay_port = free_port(), free_port()
    relay = world.spawn("relay", [sys.executable, world.args.relay, "--jitter-ms", "0", "--drop-nth-source", "3",
                                  f"{relay_port}:127.0.0.1:{reflector}:2"], emulate=False)
    wait_for(lambda: "relays ready" in relay.text(), 20, "the relay")
    config = world.agent_config(
        AGENT,
        reflector={"bind": "127.0.0.1", "port": reflector, "rate": 100000},
        measurement={"report_interval": 2},
        targets=[{"name": "pop-b", "protocol": "udp", "host": "127.0.0.1", "port": relay_port, "rate": 80,
                  "timeout_ms": 3000, "paths": PATHS}])
    world.spawn(f"agent-{AGENT}", [world.args.agent, "--config", config])
    m = wait_for(lambda: re.search(r"dropping source port (\d+)", relay.text()), 30, "the relay's dropped port")
    dropped_port = int(m.group(1))

    # Enough intervals for every path to have sent ~40 probes, counted after the first interval.
    def rows():
        r = world.store.rows("SELECT path, source_port, sum(sent), sum(received), sum(lost) FROM latency_paths "
                             "WHERE agent_id = ? AND target = 'pop-b' AND seq > 1 GROUP BY path, source_port "
                             "ORDER BY path", AGENT)
        return r if len(r) == PATHS and min(x[2] for x in r) >= 40 else None
    per_path = wait_for(rows, 120, "40 probes on every path in the store")
    ports = {p: port for p, port, *_ in per_path}
    assert len(set(ports.values())) == PATHS, f"paths share source ports: {ports}"
    assert dropped_port in ports.values(), f"dropped port {dropped_port} is no path's: {ports}"
    bad = [p for p, port in ports.items() if port == dropped_port][0]
    for p, port, sent, received, lost in per_path:
        ratio = lost / max(1, received + lost)
        if p == bad:
            assert received == 0 and ratio > 0.95, f"path {p} (port {port}): {received} received, {lost} lost"
        else:
            assert ratio < 0.05, f"path {p} (port {port}): {lost} lost of {received + lost}"
    sent, received, lost = world.store.rows(
        "SELECT sum(sent), sum(received), sum(lost) FROM latency_summaries WHERE agent_id = ? AND target = 'pop-b' "
        "AND seq > 1", AGENT)[0]
    overall = lost / max(1, received + lost)
    assert 0.03 < overall < 0.12, f"overall loss {overall:.3f} ({lost} of {received + lost}), expected ~1/16"
    path_sent = sum(r[2] for r in per_path)
    assert path_sent == sent, f"paths sent {path_sent}, the target {sent}"

    def scrape():
        text = metrics(http)
        loss = path_samples(text, "vantage_path_loss_ratio")
        rtt = path_samples(text, "vantage_path_rtt_mean_seconds")
        ok = len(loss) == PATHS and len(rtt) == PATHS and loss.get(bad, 0) > 0.95
        return (loss, rtt) if ok else None
    loss, rtt = wait_for(scrape, 30, "every path in /metrics")
    if shutil.which("promtool"):
        text = metrics(http)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"promtool check metrics: {check.stdout}{check.stderr}"
    others = [v for p, v in loss.items() if p != bad]
    assert max(others) < 0.2, f"/metrics path loss {loss}"
    assert rtt[bad] == 0 and all(v > 0 for p, v in rtt.items() if p != bad), f"/metrics path RTT {rtt}"
    return (f"port {dropped_port} = path {bad}: {per_path[bad][4]} lost of {per_path[bad][2]}; others lost "
            f"{sum(r[4] for r in per_path if r[0] != bad)} of {sum(r[2] for r in per_path if r[0] != bad)}; "
            f"overall {overall:.3f}; /metrics path {bad} loss {loss[bad]:.2f}, others max {max(others):.2f}")


def add_args(parser):
    parser.add_argument("--relay", required=True)


if __name__ == "__main__":
    sys.exit(harness.main({"spread": spread}, World, add_args))
