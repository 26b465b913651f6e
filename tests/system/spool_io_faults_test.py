#!/usr/bin/env python3
"""I/O faults under a running agent's spool, with real processes on loopback.

The agent runs with tests/system/spool_fault_preload.c preloaded: a control file arms a fault on
its spool directory's files (the next 3 calls of one kind fail with ENOSPC or EIO). For each kind
the agent's spool uses while shipping (open, write, read, sync, rename, unlink) and each errno, the
test arms the fault, waits until it was injected and until new batches arrive again. Afterwards
every batch the agent made is in the store or counted (dropped, or lost in AgentSelf.spool_lost),
the counts reach /metrics, and the agent stayed up. The kinds only open() uses (mkdir, listing,
stat) and a failing rollback are covered by tests/agent/ship/spool_fault_test.cpp.
Native only: a preloaded native library cannot reach an emulated agent (exit 77 under QEMU).
Run: spool_io_faults_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh --preload LIB.
"""
import errno
import os
import sys
import urllib.request

import harness
from harness import Skip, free_port, lost_logged, metric, stopped_line, wait_for

KINDS = ("write", "sync", "rename", "open", "read", "unlink")


class World(harness.World):
    def __init__(self, workdir, args):
        super().__init__(workdir, args, ["a1:eu-central"])
        self.http = None
        self.arms = 0

    def start_collector_http(self):
        port = free_port()
        self.http = f"http://127.0.0.1:{port}"
        return self.start_collector("--http", f"127.0.0.1:{port}")

    def metrics(self):
        return urllib.request.urlopen(self.http + "/metrics", timeout=10).read().decode()


def injected(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def scenario_io_faults(world):
    """ENOSPC and EIO on each kind of spool operation while the agent ships: nothing wedges, and
    store + dropped + lost = made."""
    if world.args.emulator:
        raise Skip("a preloaded native library cannot reach an emulated agent")
    spool = os.path.join(world.dir, "spool-a1")
    control = os.path.join(world.dir, "fault-control")
    log = os.path.join(world.dir, "fault-log")
    # An ASan build of the agent would refuse a library preloaded ahead of its runtime.
    asan = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
    env = dict(os.environ, LD_PRELOAD=world.args.preload, VANTAGE_FAULT_SPOOL=spool,
               VANTAGE_FAULT_CONTROL=control, VANTAGE_FAULT_LOG=log, ASAN_OPTIONS=asan)
    world.start_collector_http()
    # 8 KiB segments (the bound / 8), so that segments are made and deleted every few batches.
    a1 = world.spawn("agent-a1", [world.args.agent, "--agent-id", "a1", "--region", "eu-central", "--pop", "a1",
                                  *world.tls("a1"), "--spool", spool, "--spool-max-kb", "64", "--no-reflector",
                                  "--interval", "0.1", "--load-interval", "0.05", "--drain", "30",
                                  "--reconnect-max", "1", "--collector", f"127.0.0.1:{world.port}"], env=env)
    wait_for(lambda: len(world.seqs("a1")) >= 5, 60, "a1's first batches")
    hits = {}
    for kind in KINDS:
        for err in (errno.ENOSPC, errno.EIO):
            before = len(injected(log))
            world.arms += 1
            # A new mtime arms it: written aside and renamed over, so it is read once, whole.
            with open(control + ".new", "w") as f:
                f.write(f"{kind} {err} 3\n")
            os.utime(control + ".new", ns=(world.arms * 10**9, world.arms * 10**9))
            os.replace(control + ".new", control)
            wait_for(lambda: len(injected(log)) > before or not a1.alive(), 60, f"{kind} {err} injected")
            assert a1.alive(), f"the agent exited after {kind} failed with {err}:\n{a1.text()[-2000:]}"
            newest = max(world.seqs("a1"))
            wait_for(lambda: max(world.seqs("a1")) >= newest + 3 or not a1.alive(), 60,
                     f"batches delivered again after {kind} failed with {err}")
            assert a1.alive(), f"the agent exited after {kind} failed with {err}:\n{a1.text()[-2000:]}"
            hits[f"{kind}/{errno.errorcode[err]}"] = len(injected(log)) - before
    metrics = world.metrics()
    assert a1.stop() == 0
    spooled, last, left = stopped_line(a1)
    assert left == 0, f"{left} batches still spooled at stop"
    seqs = world.seqs("a1")
    assert seqs == sorted(set(seqs)), "a seq stored twice"
    dropped = world.scalar("SELECT max(spool_dropped) FROM batches WHERE agent_id = 'a1'")
    lost, errors = world.rows("SELECT spool_lost, spool_errors FROM agent_self WHERE agent_id = 'a1' "
                              "ORDER BY seq DESC LIMIT 1")[0]
    not_stored = lost_logged(a1.text())
    made = spooled + not_stored
    # A batch dropped for room (ENOSPC) after it was sent may still have arrived: the drop count
    # bounds the loss from above, by at most the batches in flight.
    over = len(seqs) + dropped + lost - made
    assert 0 <= over <= 32, f"store {len(seqs)} + dropped {dropped} + lost {lost} != made {made}"
    assert lost >= not_stored and errors >= sum(hits.values()) // 3, (lost, errors, hits)
    assert metric(metrics, "vantage_agent_spool_errors_total", "a1") > 0
    assert metric(metrics, "vantage_agent_spool_lost_total", "a1") is not None
    world.collector.stop()
    return (f"{made} batches made: {len(seqs)} stored, {dropped} dropped, {lost} lost ({not_stored} never stored)"
            f"{f', {over} dropped after being sent' if over else ''}; {errors} spool errors; injected "
            + ", ".join(f"{k} x{v}" for k, v in hits.items()))


SCENARIOS = {"io-faults": scenario_io_faults}


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, World, add_args=lambda p: p.add_argument("--preload", required=True)))
