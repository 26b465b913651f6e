#!/usr/bin/env python3
"""Scale-out delivery through NATS JetStream with real processes on loopback only.

A `nats-server -js` (the host's, with its own store directory and port), two SQLite-free
collectors publishing into one stream, four agents (each configured with both collectors, in
opposite orders), and a kill -9 of nats-server mid-run with a restart on the same store. The
stream is read back with `vantage-collector consume`. Checks: every (agent, seq) from 1..N is in
the stream exactly once; an agent stopped during the outage was never acked for a batch the
stream does not hold; both collectors log the outage and the recovery.
Run: jetstream_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [-- EMULATOR WORDS...]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import harness
from harness import REGION, free_port, stopped_line, wait_for

STREAM = "VANTAGE"


class World(harness.World):
    """nats-server -js with its own store, two SQLite-free collectors publishing into one stream and
    four agents, each given both collectors."""

    def __init__(self, workdir, args):
        self.agents = ["a1", "a2", "a3", "a4"]
        super().__init__(workdir, args, [f"{a}:{REGION}:pop-{a}" for a in self.agents])
        self.nats_port, self.monitor_port = free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.stream_dir = os.path.join(workdir, "jetstream")
        self.collector_ports = [free_port(), free_port()]
        self.nats = None

    def start_nats(self):
        self.nats = self.spawn("nats-server", [self.args.nats_server, "-js", "-a", "127.0.0.1", "-p",
                                               str(self.nats_port), "-m", str(self.monitor_port), "-sd", self.stream_dir],
                               emulate=False)
        wait_for(lambda: self.stream_messages() is not None, 20, "nats-server to answer")

    def stream_messages(self):
        """Messages in the stream per the server's monitoring endpoint (0 before it exists), or
        None while the server is down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz?streams=1", timeout=2) as r:
                jsz = json.load(r)
        except OSError:
            return None
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream["name"] == STREAM:
                    return stream["state"]["messages"]
        return 0

    def start_collector(self, i):
        return super().start_collector("--jetstream", self.url, "--stream", STREAM, name=f"collector{i + 1}",
                                       port=self.collector_ports[i], db=False)

    def start_agent(self, agent_id, first_collector, drain=20):
        order = [first_collector, 1 - first_collector]
        return super().start_agent(agent_id, "--no-reflector", "--interval", "0.3", "--load-interval", "0.1",
                                   "--drain", str(drain), pop=f"pop-{agent_id}",
                                   collectors=[f"127.0.0.1:{self.collector_ports[i]}" for i in order])

    def consume(self):
        """The stream as `vantage-collector consume` prints it: {agent: [seq, ...]} in stream order."""
        # consume ends once caught up; the fetch timeout only has to outlast a slow (emulated) fetch.
        out = subprocess.run(self.args.emulator + [self.args.collector, "consume", "--jetstream", self.url,
                                                   "--stream", STREAM, "--timeout", "10000"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"consume exited {out.returncode}: {out.stderr[-2000:]}"
        seqs = {}
        for line in out.stdout.splitlines():
            m = re.match(r"stream_seq=(\d+) agent=(\S+) region=(\S+) pop=(\S+) seq=(\d+) interval=\S+ latency=(\d+)",
                         line)
            assert m, f"unexpected consume line: {line}"
            assert m.group(3) == REGION and m.group(4) == f"pop-{m.group(2)}", line
            seqs.setdefault(m.group(2), []).append(int(m.group(5)))
        return seqs, out.stdout


def scenario_two_collectors_nats_kill9(world):
    world.start_nats()
    collectors = [world.start_collector(0), world.start_collector(1)]
    agents = {a: world.start_agent(a, first_collector=i % 2, drain=(1 if a == "a4" else 20))
              for i, a in enumerate(world.agents)}
    wait_for(lambda: (world.stream_messages() or 0) >= 24, 60, "batches from all agents in the stream")

    # kill -9 nats-server mid-run; a4 stops during the outage: what it counts as acked must be
    # in the stream once the server is back.
    world.nats.kill9()
    outage_start = time.monotonic()
    time.sleep(2.5)
    assert agents["a4"].stop() == 0
    _, a4_acked, a4_left = stopped_line(agents["a4"])
    time.sleep(1)
    world.start_nats()
    outage = time.monotonic() - outage_start
    wait_for(lambda: all("JetStream: reconnected" in c.text() for c in collectors), 30,
             "both collectors to reconnect to NATS")
    seqs, _ = world.consume()
    held = seqs.get("a4", [])
    assert max(held, default=0) >= a4_acked and set(range(1, a4_acked + 1)) <= set(held), \
        f"a4 was acked through {a4_acked} during the outage, the stream holds {held[-5:]}"
    assert a4_left > 0, "a4 spooled nothing during the outage"

    # a4 comes back with its spool; everyone runs a while longer, then stops with nothing left.
    agents["a4"] = world.start_agent("a4", first_collector=1)
    before = world.stream_messages()
    wait_for(lambda: (world.stream_messages() or 0) >= before + 16, 60, "batches after the restart")
    acked = {}
    for a, p in agents.items():
        assert p.stop() == 0, f"{a} did not stop cleanly"
        _, acked[a], left = stopped_line(p)
        assert left == 0, f"{a}: {left} batches still spooled at stop"
    seqs, text = world.consume()
    for a in world.agents:
        got = seqs.get(a, [])
        assert sorted(got) == list(range(1, acked[a] + 1)), \
            f"{a}: stream has {len(got)} batches ({len(set(got))} distinct), expected 1..{acked[a]}"
    for c in collectors:
        log = c.text()
        assert "JetStream: disconnected from NATS" in log and "JetStream: reconnected to" in log, log[-2000:]
        assert c.stop() == 0
    served = [len(re.findall(r"agent a\d \(", c.text())) for c in collectors]
    assert all(n > 0 for n in served), f"agents per collector: {served}"
    total = sum(len(v) for v in seqs.values())
    sample = "\n".join(text.splitlines()[:3])
    return (f"{total} batches in one stream from 4 agents via 2 collectors ({served[0]}/{served[1]} sessions), "
            f"each 1..N exactly once ({', '.join(f'{a} 1..{acked[a]}' for a in world.agents)}); "
            f"nats-server kill -9, {outage:.1f} s outage; a4 stopped during it acked through {a4_acked} "
            f"(all in the stream), {a4_left} spooled\n{sample}")


def make_world(workdir, args):
    if not args.nats_server:
        raise AssertionError("nats-server is not installed (toolchains/bootstrap.sh installs it)")
    return World(workdir, args)


if __name__ == "__main__":
    sys.exit(harness.main({"two-collectors-nats-kill9": scenario_two_collectors_nats_kill9}, make_world,
                          add_args=lambda p: p.add_argument("--nats-server", default=shutil.which("nats-server"))))
