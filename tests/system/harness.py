"""What the system tests share (tests/system/*_test.py and tests/vm/system_test.py): the command
line (the binaries, tools/dev-pki.sh, and after "--" the cross-compiling emulator), processes with
their logs and cleanup, free ports on loopback, waiting with a timeout, the dev PKI, a collector's
SQLite store, agent config files, and running named scenarios with a PASS/FAIL line each.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGION = "eu-central"


# --- the target architectures (toolchains/arches.env, the one list) -------------------------------

def arches():
    """toolchains/arches.env as a dict; `all` lists every architecture, the cross ones first."""
    values = {}
    with open(os.path.join(TOP, "toolchains", "arches.env")) as f:
        for line in f:
            name, eq, value = line.strip().partition("=")
            if eq and not name.startswith("#"):
                values[name] = value.strip('"')
    values["all"] = values["cross_arches"].split() + [values["native_arch"]]
    return values


# --- the command line ------------------------------------------------------------------------------

def parse_args(parser, binaries=("agent", "collector", "pki")):
    """Adds --agent, --collector, --pki (each of `binaries`, required) to parser and parses
    sys.argv; everything after "--" is the emulator command (e.g. qemu-aarch64-static -L
    /usr/aarch64-linux-gnu), in args.emulator."""
    for name in binaries:
        parser.add_argument(f"--{name}", required=True)
    argv = sys.argv[1:]
    emulator = []
    if "--" in argv:
        i = argv.index("--")
        argv, emulator = argv[:i], [w for w in argv[i + 1:] if w]
    args = parser.parse_args(argv)
    args.emulator = emulator
    # The processes run in their scenario's directory: a relative path would not be found there.
    for name in binaries:
        if os.path.exists(getattr(args, name)):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


# --- ports -----------------------------------------------------------------------------------------
# A port the kernel hands out for bind(0) comes from the ephemeral range, so between the test
# picking it and its server binding it, any other socket (a relay's, a client's, another test's)
# may be given the same port. Ports here come from below that range instead, and are checked free
# for TCP and UDP on both loopback addresses.

def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                with socket.socket(family, kind) as s:
                    s.bind((host, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                    continue
                return False
    return True


def free_port():
    """A TCP/UDP port on loopback that no socket holds and the kernel will not hand out."""
    high = _ephemeral_low()
    low = max(1024, min(10000, high - 2000))
    for _ in range(500):
        port = random.randrange(low, high)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


# --- waiting ---------------------------------------------------------------------------------------

def wait_for(predicate, timeout, what, interval=0.05):
    """predicate()'s first true value within timeout seconds; OSError and ValueError (a server not
    up yet, a half-written reply) count as not yet. Raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                         (f" (last: {last!r})" if last not in (None, False) else ""))


# --- processes -------------------------------------------------------------------------------------

class Proc:
    """A process whose output goes to <workdir>/<name>.log."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir, env=env)

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait_log(self, text, timeout):
        """Until the log says text; fails at once, with the log, when the process exits first."""
        wait_for(lambda: text in self.text() or not self.alive(), timeout, f"'{text}' from {self.name}")
        assert text in self.text(), f"{self.name} exited ({self.p.returncode}) before '{text}':\n{self.text()[-3000:]}"

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)

    def stop(self, timeout=60):
        """SIGTERM, then the exit status (SIGKILL after timeout seconds)."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()
        return self.p.returncode

    def rss_kib(self):
        # Under an emulator the agent is the emulator process itself: its RSS includes QEMU's.
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def stopped_line(agent):
    """(batches spooled, acked through, still spooled) from an agent's last stop report."""
    m = re.findall(r"stopped: (\d+) batches spooled, acked through (\d+), (\d+) still spooled", agent.text())
    assert m, f"{agent.name} did not report its stop:\n{agent.text()[-2000:]}"
    return tuple(map(int, m[-1]))


# --- the collector's store -------------------------------------------------------------------------

class Store:
    """Read-only queries on a collector's SQLite file; with tolerant=True, a store not there yet
    (or without the table yet) reads as empty."""

    def __init__(self, path, tolerant=False):
        self.path = path
        self.tolerant = tolerant

    def rows(self, sql, *params):
        if self.tolerant and not os.path.exists(self.path):
            return []
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            if self.tolerant:
                return []
            raise
        finally:
            con.close()

    def scalar(self, sql, *params):
        return self.rows(sql, *params)[0][0]

    def seqs(self, agent_id):
        return [r[0] for r in self.rows("SELECT seq FROM batches WHERE agent_id = ? ORDER BY seq", agent_id)]


# --- config files ----------------------------------------------------------------------------------

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def toml(doc):
    """TOML text of {table: {key: value}} and {table: [{key: value}, ...]} (an array of tables)."""
    out = []
    for table, body in doc.items():
        for entry, header in ([(body, f"[{table}]")] if isinstance(body, dict) else
                              [(e, f"[[{table}]]") for e in body]):
            out.append(header)
            out += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
            out.append("")
    return "\n".join(out)


def agent_config(agent_id, addresses, ca, cert, key, spool, region=REGION, pop=None, drain=None, **tables):
    """An agent's config file: identity, one region's collectors, TLS files and spool, then `tables`
    ([reflector], targets=[...], [measurement], ...)."""
    doc = {"identity": {"agent_id": agent_id, "region": region, "pop": pop or agent_id},
           "collectors": [{"region": region, "addresses": list(addresses)}]}
    if drain is not None:
        doc["delivery"] = {"drain": drain}
    doc["tls"] = {"ca": ca, "cert": cert, "key": key}
    doc["spool"] = {"dir": spool}
    doc.update(tables)
    return toml(doc)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# --- one scenario's world --------------------------------------------------------------------------

def dev_pki(script, directory, identities, other_ca=()):
    """tools/dev-pki.sh: a CA, the collector's certificate and one per "agent:region" identity;
    other_ca adds those identities under a second, unrelated CA (directory/other-ca)."""
    subprocess.run([script, directory, *identities], check=True, stdout=subprocess.DEVNULL)
    if other_ca:
        subprocess.run([script, "--other-ca", directory, *other_ca], check=True, stdout=subprocess.DEVNULL)
    return directory


class World:
    """One scenario's processes in its work directory: the dev PKI (for `identities`; none when
    None), a collector (port self.port, store self.db) and agents, all under the emulator unless
    emulate=False, killed at cleanup."""

    def __init__(self, workdir, args, identities=None, other_ca=()):
        self.dir = workdir
        self.args = args
        self.pki = None if identities is None else dev_pki(args.pki, os.path.join(workdir, "pki"), identities,
                                                            other_ca)
        self.db = os.path.join(workdir, "store.db")
        self.store = Store(self.db)
        self.port = free_port()
        self.collector = None
        self.procs = []

    def spawn(self, name, argv, emulate=True, env=None):
        p = Proc(name, (self.args.emulator if emulate else []) + list(argv), self.dir, env=env)
        self.procs.append(p)
        return p

    def tls(self, name):
        """--ca, --cert and --key for the PKI's `name` (collector, an agent id)."""
        return ["--ca", f"{self.pki}/ca.crt", "--cert", f"{self.pki}/{name}.crt", "--key", f"{self.pki}/{name}.key"]

    def start_collector(self, *extra, name="collector", region=REGION, port=None, listen=None, db=True,
                        cert="collector", ready="listening on"):
        """`vantage-collector serve` on 127.0.0.1:port (this world's port unless given) or listen, its
        store db (True: self.db; False: none, extra says where batches go), and extra; returns once
        its log says ready."""
        store = ["--db", self.db if db is True else db] if db else []
        c = self.spawn(name, [self.args.collector, "serve", *store, "--region", region, *self.tls(cert),
                              "--listen", listen or f"127.0.0.1:{port or self.port}", *extra])
        c.wait_log(ready, 30)
        if name == "collector":
            self.collector = c
        return c

    def start_agent(self, agent_id, *extra, collectors=None, cert=None, region=REGION, pop=None, spool=None,
                    reconnect_max=1):
        """vantage-agent with the command-line identity, TLS and spool; collectors default to this
        world's collector."""
        argv = [self.args.agent, "--agent-id", agent_id, "--region", region, "--pop", pop or agent_id,
                *self.tls(cert or agent_id), "--spool", spool or os.path.join(self.dir, f"spool-{agent_id}"),
                "--reconnect-max", str(reconnect_max), *extra]
        for c in collectors or [f"127.0.0.1:{self.port}"]:
            argv += ["--collector", c]
        return self.spawn(f"agent-{agent_id}", argv)

    def agent_config(self, agent_id, drain=20, **tables):
        """An agent config file for this world's collector and PKI: <workdir>/<agent_id>.toml."""
        return write(os.path.join(self.dir, f"{agent_id}.toml"), agent_config(
            agent_id, [f"127.0.0.1:{self.port}"], f"{self.pki}/ca.crt", f"{self.pki}/{agent_id}.crt",
            f"{self.pki}/{agent_id}.key", os.path.join(self.dir, f"spool-{agent_id}"), drain=drain, **tables))

    def rows(self, sql, *params):
        return self.store.rows(sql, *params)

    def scalar(self, sql, *params):
        return self.store.scalar(sql, *params)

    def seqs(self, agent_id):
        return self.store.seqs(agent_id)

    def cleanup(self):
        for p in reversed(self.procs):
            if p.alive():
                p.p.kill()
                p.p.wait()


# --- what an agent reports ------------------------------------------------------------------------

def lost_logged(text):
    """How many batches the agent logged as not stored, counting rate-limited repeats."""
    lines = len(re.findall(r"spool: batch \d+ not stored", text))
    repeats = sum(int(n) for n in re.findall(r"suppressed (\d+) repeats of: spool: batch \d+ not stored", text))
    return lines + repeats


def metric(text, name, agent):
    """The value of /metrics family `name` for `agent` (text: a scrape), or None."""
    m = re.search(rf'^{name}{{[^}}]*agent="{agent}"[^}}]*}} (\S+)$', text, re.M)
    return None if m is None else float(m.group(1))


def assert_complete(world, agent, agent_id, first=1):
    """The agent stopped with nothing left to send, and the store holds first..N exactly once."""
    _, acked, left = stopped_line(agent)
    assert left == 0, f"{agent_id}: {left} batches still spooled at stop"
    seqs = world.seqs(agent_id)
    expected = list(range(first, acked + 1))
    assert seqs == expected, f"{agent_id}: store has {len(seqs)} seqs {seqs[:5]}..{seqs[-5:]}, expected {first}..{acked}"
    return acked


# --- running scenarios -----------------------------------------------------------------------------

class Skip(Exception):
    """A scenario that cannot run here (a host program is missing): exit status 77."""


def run_scenarios(scenarios, names, make_world):
    """Runs each named scenario (a function of a world that returns its summary) in a fresh work
    directory, make_world(workdir) giving the world. Prints PASS/SKIP/FAIL a scenario and, for a
    failure, the tail of every process's log (the directory is kept). 1 if any failed, 77 if any
    was skipped, else 0."""
    failed = skipped = 0
    for name in names:
        start = time.monotonic()
        workdir = tempfile.mkdtemp(prefix=f"vantage-{name}-")
        world = None
        keep = False
        try:
            world = make_world(workdir)
            summary = scenarios[name](world)
            print(f"PASS {name} ({time.monotonic() - start:.1f} s): {summary}", flush=True)
        except Skip as e:
            skipped += 1
            print(f"SKIP {name}: {e}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure with the logs
            failed += 1
            keep = True
            print(f"FAIL {name} ({time.monotonic() - start:.1f} s): {type(e).__name__}: {e}", flush=True)
            for p in world.procs if world else []:
                print(f"--- {p.name} log (last 3000 bytes)\n{p.text()[-3000:]}", flush=True)
        finally:
            if world:
                world.cleanup()
            if keep:
                print(f"logs kept in {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        return 1
    return 77 if skipped else 0


def main(scenarios, make_world, add_args=None, binaries=("agent", "collector", "pki")):
    """The usual main(): --agent, --collector, --pki (or `binaries`) [--only NAME ...],
    add_args(parser) for more, "--" and the emulator; runs the scenarios (all, or --only's) and
    returns the exit status."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", choices=sorted(scenarios))
    if add_args:
        add_args(parser)
    args = parse_args(parser, binaries)
    return run_scenarios(scenarios, args.only or list(scenarios), lambda workdir: make_world(workdir, args))
