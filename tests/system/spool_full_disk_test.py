#!/usr/bin/env python3
"""A real full disk under the agent's spool, with real processes on loopback.

The spool lives on a 160 KiB tmpfs mounted by the test in its own mount namespace (unshare
--mount: nothing outlives the test). With the collector away, the spool fills the tmpfs and the
agent drops its oldest batches to make room (counted). Then the tmpfs grows, the collector comes
and the spool drains; then a filler file takes the whole tmpfs while the spool is empty, so new
batches are lost (counted); then the filler goes. Afterwards: every seq the agent made is in the
store or counted as dropped, the lost batches are counted in AgentSelf.spool_lost (in the store
and on /metrics) exactly as often as the agent logged one, and the agent stayed up throughout.
Needs root (mount); exits 77 (skip) without it or where mounting is impossible.
Run: spool_full_disk_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh [-- EMULATOR...].
"""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import harness
from harness import Skip, free_port, lost_logged, metric, stopped_line, wait_for

NAMESPACED = "VANTAGE_SPOOL_TEST_NAMESPACE"


class World(harness.World):
    def __init__(self, workdir, args):
        super().__init__(workdir, args, ["a1:eu-central"])
        self.mounts = []
        self.http = None

    def mount_tmpfs(self, path, size):
        os.makedirs(path)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        self.mounts.append(path)

    def remount_tmpfs(self, path, size):
        subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True)

    def metrics(self):
        return urllib.request.urlopen(self.http + "/metrics", timeout=10).read().decode()

    def start_collector_http(self):
        port = free_port()
        self.http = f"http://127.0.0.1:{port}"
        return self.start_collector("--http", f"127.0.0.1:{port}")

    def cleanup(self):
        super().cleanup()
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", m], capture_output=True)


def fill(path):
    """Appends zeros to path until the file system is full; returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        for chunk in (65536, 4096, 512):
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def scenario_full_disk(world):
    """The spool's disk fills (the oldest are dropped for room), then is taken by another writer
    while the spool is empty (new batches are lost), then frees up: dropped and lost are counted,
    the store plus the counts account for every batch, and the agent never stops."""
    mnt = os.path.join(world.dir, "mnt")
    world.mount_tmpfs(mnt, "160k")
    spool = os.path.join(mnt, "spool")
    a1 = world.start_agent("a1", "--no-reflector", "--interval", "0.1", "--load-interval", "0.05",
                           "--spool-max-kb", "256", "--drain", "30", spool=spool)

    # 1. The collector is away: the spool fills the tmpfs and drops its oldest to make room (none of
    # them was sent).
    a1.wait_log("spool: disk full: dropped", 120)
    # 2. Room again, and the collector comes: the agent delivers what it kept, until its spool is
    # empty (the backlog each new batch reports is 0).
    world.remount_tmpfs(mnt, "4m")
    world.start_collector_http()
    wait_for(lambda: metric(world.metrics(), "vantage_agent_spool_batches", "a1") == 0, 120,
             "the agent's spool drained")
    assert not lost_logged(a1.text()), "a batch was lost while there was room"
    # 3. Another writer takes the whole disk: with nothing left to drop, new batches are lost, and
    # counted, while the agent keeps measuring.
    filler = os.path.join(mnt, "filler")
    filled = 0
    deadline = time.monotonic() + 120
    while lost_logged(a1.text()) < 5 and a1.alive() and time.monotonic() < deadline:
        filled += fill(filler)
        time.sleep(0.01)
    assert lost_logged(a1.text()) >= 5, f"no batch was lost to the full disk:\n{a1.text()[-2000:]}"
    assert a1.alive(), f"the agent exited on a full disk:\n{a1.text()[-2000:]}"
    # 4. Room again: delivery goes on.
    os.unlink(filler)
    before = max(world.seqs("a1"))
    wait_for(lambda: max(world.seqs("a1")) >= before + 5, 120, "batches after the disk had room again")
    assert a1.alive(), f"the agent exited:\n{a1.text()[-2000:]}"
    metrics = world.metrics()
    assert a1.stop() == 0
    _, last, left = stopped_line(a1)
    assert left == 0, f"{left} batches still spooled at stop"

    seqs = world.seqs("a1")
    assert seqs == sorted(set(seqs)), "a seq stored twice"
    dropped = world.scalar("SELECT max(spool_dropped) FROM batches WHERE agent_id = 'a1'")
    lost, errors = world.rows("SELECT spool_lost, spool_errors FROM agent_self WHERE agent_id = 'a1' "
                              "ORDER BY seq DESC LIMIT 1")[0]
    logged = lost_logged(a1.text())
    made = last + lost  # every stored or dropped batch has a seq; a lost one never got one
    # A batch dropped just after it was sent may still have arrived (the count bounds the loss from
    # above): only if an ack took longer than a report interval in step 3, so at most one or two.
    over = len(seqs) + dropped - last
    assert 0 <= over <= 2, f"store {len(seqs)} + dropped {dropped} != seqs made {last}"
    assert len(seqs) + dropped + lost == made + over
    assert dropped > 0, "the full disk dropped nothing"
    assert lost >= 5 and lost == logged, f"AgentSelf.spool_lost {lost}, the agent logged {logged} lost batches"
    assert errors >= lost, f"spool_errors {errors} < lost {lost}"
    # /metrics showed the counts of the batch the collector had last; they only grow after.
    shown_lost = metric(metrics, "vantage_agent_spool_lost_total", "a1")
    shown_dropped = metric(metrics, "vantage_agent_spool_dropped_total", "a1")
    assert shown_lost is not None and 5 <= shown_lost <= lost, f"/metrics spool_lost {shown_lost}"
    assert shown_dropped is not None and 0 < shown_dropped <= dropped, f"/metrics spool_dropped {shown_dropped}"
    assert metric(metrics, "vantage_agent_spool_errors_total", "a1") is not None
    world.collector.stop()
    return (f"{made} batches made: {len(seqs)} stored, {dropped} dropped for room, {lost} lost to the full "
            f"disk (filler {filled >> 10} KiB){f', {over} dropped after being sent' if over else ''}; "
            f"/metrics showed lost {shown_lost:.0f}, dropped {shown_dropped:.0f}")


SCENARIOS = {"full-disk": scenario_full_disk}


def main():
    if os.environ.get(NAMESPACED) != "1":
        if os.geteuid() != 0:
            print("SKIP full-disk: needs root to mount a tmpfs", flush=True)
            return 77
        unshare = shutil.which("unshare")
        if unshare is None or subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                                             capture_output=True).returncode != 0:
            print("SKIP full-disk: cannot make a private mount namespace (unshare --mount)", flush=True)
            return 77
        # Mounts made in a private mount namespace vanish with it, whatever happens to the test.
        env = dict(os.environ, **{NAMESPACED: "1"})
        return subprocess.run([unshare, "--mount", "--propagation", "private", sys.executable,
                               os.path.abspath(__file__), *sys.argv[1:]], env=env).returncode
    return harness.main(SCENARIOS, World)


if __name__ == "__main__":
    sys.exit(main())
