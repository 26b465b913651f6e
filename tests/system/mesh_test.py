#!/usr/bin/env python3
"""The mesh end to end with real processes on loopback: one collector whose config holds a
two-line full-mesh rule, and agents in ten PoPs that configure no target at all. Each agent's
reflector listens on an address of its own (127.0.<10+pop>.<n>), announced in its Hello; the
collector computes every agent's target list and sends it over the session.

  mesh      30 agents in 10 PoPs: every agent probes the 27 agents of the other nine PoPs, the
            list it runs is the one the collector planned (no agent on an old version in
            /metrics); a 31st agent joins and every other
            agent probes it from the interval after next once it was seen; one agent leaves and, once the
            collector forgets it, nobody probes it; the config's own target is never removed.
  offline   an agent restarted while the collector is away probes the list it kept on disk.

Run: mesh_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [--only NAME] [-- EMULATOR...]
"""
import json
import os
import sys
import time
import urllib.request
import harness
from harness import REGION, free_port, wait_for

POPS = [f"pop{p}" for p in range(10)]
PER_POP = 3
INTERVAL_S = 1.0
FORGET_S = 3


def agent_ids():
    return [(f"{pop}-a{n}", pop, 10 + p, n + 1) for p, pop in enumerate(POPS) for n in range(PER_POP)]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class World(harness.World):
    def __init__(self, workdir, args):
        ids = [f"{a}:{REGION}:{pop}" for a, pop, _, _ in agent_ids()] + [f"pop3-a9:{REGION}:pop3"]
        super().__init__(workdir, args, ids)
        self.reflector_port = free_port()
        self.http_port = free_port()
        self.agents = {}

    def collector_config(self):
        doc = {
            "ingest": {"listen": [f"127.0.0.1:{self.port}"], "regions": [REGION]},
            "store": {"database": self.db},
            "tls": {"ca": f"{self.pki}/ca.crt", "cert": f"{self.pki}/collector.crt",
                    "key": f"{self.pki}/collector.key"},
            "http": {"listen": [f"127.0.0.1:{self.http_port}"]},
            "mesh": {"forget_after_s": FORGET_S},
            # The whole mesh: every agent probes every agent of every other PoP of its region.
            "mesh.rules": [{"name": "region", "kind": "full-mesh", "to_region": "same",
                            "protocol": "udp", "interval_ms": 100}],
        }
        return harness.write(os.path.join(self.dir, "collector.toml"), harness.toml(doc))

    def start_mesh_collector(self):
        c = self.spawn("collector", [self.args.collector, "serve", "--config", self.collector_config()])
        c.wait_log("listening on", 30)
        self.collector = c
        return c

    def reflector_address(self, agent_id):
        _, _, third, fourth = next(a for a in agent_ids() + [("pop3-a9", "pop3", 13, 9)] if a[0] == agent_id)
        return f"127.0.{third}.{fourth}"

    def start_mesh_agent(self, agent_id, pop, targets=()):
        path = self.agent_config(
            agent_id, drain=5,
            identity={"agent_id": agent_id, "region": REGION, "pop": pop},
            reflector={"enabled": True, "bind": self.reflector_address(agent_id), "port": self.reflector_port},
            measurement={"report_interval": INTERVAL_S, "load_interval": 0},
            **({"targets": list(targets)} if targets else {}))
        a = self.spawn(f"agent-{agent_id}", [self.args.agent, "--config", path])
        self.agents[agent_id] = a
        return a

    def label(self, agent_id):
        """What its probers call an agent's reflector: POP/AGENT."""
        return f"{agent_id.split('-')[0]}/{agent_id}"

    def latest_targets(self, agent_id):
        """The targets (with probes sent) of the agent's latest stored batch, and its seq."""
        seq = self.scalar("SELECT max(seq) FROM batches WHERE agent_id = ?", agent_id)
        if seq is None:
            return None, set()
        rows = self.rows("SELECT target FROM latency_summaries WHERE agent_id = ? AND seq = ? AND sent > 0",
                         agent_id, seq)
        return seq, {r[0] for r in rows}

    def batches_since(self, agent_id, wall_ns):
        """(seq, targets with probes sent) of each batch whose interval began at or after wall_ns."""
        out = []
        for (seq,) in self.rows("SELECT seq FROM batches WHERE agent_id = ? AND interval_start_ns >= ? ORDER BY seq",
                                agent_id, wall_ns):
            rows = self.rows("SELECT target FROM latency_summaries WHERE agent_id = ? AND seq = ? AND sent > 0",
                             agent_id, seq)
            out.append((seq, {r[0] for r in rows}))
        return out

    def metrics(self):
        return http_get(f"http://127.0.0.1:{self.http_port}/metrics")


def gauge(text, name):
    """A label-less sample's value from a scrape, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def expected(world, agent_id, members):
    pop = agent_id.split("-")[0]
    return {world.label(a) for a in members if a.split("-")[0] != pop}


def settled(world, members, want=None):
    """Every member's latest batch probes exactly the agents of the other PoPs (or want(a))."""
    for a in members:
        _, got = world.latest_targets(a)
        if got != (want(a) if want else expected(world, a, members)):
            return False
    return True


def scenario_mesh(world):
    began = int(time.time()) - 1
    world.start_mesh_collector()
    members = [a for a, _, _, _ in agent_ids()]
    # pop0-a0 also has a target of its own, on pop1-a0's reflector: a mesh target too, which the
    # local one wins over and which survives pop1-a0 leaving the mesh.
    own = {"name": "own", "protocol": "udp", "host": world.reflector_address("pop1-a0"),
           "port": world.reflector_port, "rate": 5}
    for agent_id, pop, _, _ in agent_ids():
        world.start_mesh_agent(agent_id, pop, targets=[own] if agent_id == "pop0-a0" else ())
    def want(a):
        # pop0-a0's own target replaces the mesh's target on the same reflector.
        mesh = expected(world, a, members)
        return (mesh - {world.label("pop1-a0")}) | {"own"} if a == "pop0-a0" else mesh
    wait_for(lambda: settled(world, members, want), 120, "every agent probing the 27 agents of the other PoPs")

    # The matrix files every agent's reflector under its PoP: every ordered pair of the 10 PoPs,
    # and pop0's own target.
    matrix = json.loads(http_get(f"http://127.0.0.1:{world.http_port}/api/matrix"))
    assert sorted(matrix["pops"]) == sorted(POPS + ["own"]), matrix["pops"]
    pairs = {(matrix["pops"][s], matrix["pops"][d]) for s, d in zip(matrix["src"], matrix["dst"])}
    want_pairs = {(a, b) for a in POPS for b in POPS if a != b} | {("pop0", "own")}
    assert pairs == want_pairs, sorted(pairs ^ want_pairs)[:5]
    # A PoP pair's drill-down from the store takes in every agent of the source PoP: over a week
    # from the start, steps are 168 s, and the first holds the batches of the run's first minutes.
    pair = json.loads(http_get(f"http://127.0.0.1:{world.http_port}/api/pair?from=pop0&to=pop1"
                               f"&since={began}&until={began + 7 * 86400}"))
    assert pair["step_s"] == 168 and pair["t"][0] == began and pair["agents"][0] == PER_POP and pair["sent"][0] > 0, \
        {k: pair[k] for k in ("step_s", "t", "agents", "sent")}

    # The list each agent runs is the one the collector planned for it: none is stale.
    text = world.metrics()
    stale = gauge(text, "vantage_mesh_agents_stale")
    assert stale == 0, f"{stale} agents on an old list"

    # A 31st agent joins pop3: seen by the test once its first batch is stored; every other
    # agent's batches from the next interval on probe it.
    world.start_mesh_agent("pop3-a9", "pop3")
    wait_for(lambda: world.latest_targets("pop3-a9")[0] is not None, 60, "the 31st agent's first batch")
    seen_ns = time.time_ns()
    members.append("pop3-a9")
    wait_for(lambda: settled(world, members, want), 60, "every agent probing the 31st")
    # The list reaches the others at the joiner's Hello, before its first batch; an interval that
    # began a little later (margin for a busy machine) must probe it.
    from_ns = seen_ns + int(2 * INTERVAL_S * 1e9)
    for a in members:
        if a.split("-")[0] == "pop3":
            continue
        for seq, targets in world.batches_since(a, from_ns):
            assert world.label("pop3-a9") in targets, f"{a} batch {seq} (after the join) lacks the 31st agent"

    # pop1-a0 leaves: once the collector forgets it, no agent probes it; pop0-a0's own target on
    # its reflector stays (local targets are never removed by the collector).
    world.agents["pop1-a0"].stop()
    left_ns = time.time_ns()
    members.remove("pop1-a0")
    wait_for(lambda: all(world.label("pop1-a0") not in world.latest_targets(a)[1]
                         for a in members if a != "pop0-a0"), 60, "nobody probing the agent that left")
    from_ns = left_ns + int((FORGET_S + 3 * INTERVAL_S) * 1e9)
    wait_for(lambda: all(len(world.batches_since(a, from_ns)) >= 1 for a in members), 60, "batches after forgetting")
    for a in members:
        for seq, targets in world.batches_since(a, from_ns):
            if a == "pop0-a0":
                assert targets == want(a), (a, seq, sorted(targets))
            else:
                assert world.label("pop1-a0") not in targets, f"{a} batch {seq} still probes the agent that left"
    return (f"{len(members) + 1} agents in {len(POPS)} PoPs from a one-rule mesh: each probed every other PoP's "
            f"agents, a joiner was probed from the next interval, a leaver was dropped {FORGET_S} s after it left")


def scenario_offline(world):
    world.start_mesh_collector()
    members = [a for a, _, _, _ in agent_ids() if a.split("-")[0] in ("pop0", "pop1", "pop2")]
    for agent_id, pop, _, _ in agent_ids():
        if agent_id in members:
            world.start_mesh_agent(agent_id, pop)
    wait_for(lambda: settled(world, members), 90, "the three-PoP mesh")
    world.collector.stop()
    a = world.agents["pop0-a0"]
    assert a.stop() == 0
    away_ns = time.time_ns()
    restarted = world.start_mesh_agent("pop0-a0", "pop0")
    restarted.wait_log("from disk", 30)
    time.sleep(4 * INTERVAL_S)
    world.start_mesh_collector()
    wait_for(lambda: len(world.batches_since("pop0-a0", away_ns)) >= 3, 60, "the restarted agent's batches")
    want = expected(world, "pop0-a0", members)
    batches = world.batches_since("pop0-a0", away_ns)
    # The batches made while the collector was away (before any new list could arrive) probe the
    # kept list's targets.
    assert all(t == want for _, t in batches[1:3]), [(s, sorted(t)) for s, t in batches[:3]]
    return f"restarted with the collector away, pop0-a0 probed its kept list ({len(want)} targets)"


if __name__ == "__main__":
    sys.exit(harness.main({"mesh": scenario_mesh, "offline": scenario_offline}, World))
