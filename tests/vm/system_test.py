#!/usr/bin/env python3
"""System tests under QEMU: the agent's .deb on emulated arm64, armhf and amd64 machines.

For each architecture: boots the Debian 12 image of tests/vm/build-image.sh under qemu-system-*
(software emulation, -snapshot, user-mode networking), with a second read-only disk carrying a
payload tar (the agent .deb of that architecture, its certificate, a config pointing at the host's
collector through 10.0.2.2, tests/vm/guest-check.sh). The guest installs the package, runs the
service and reports its checks on the serial console; the host then checks the collector's store.
On the host: a collector on loopback (the amd64 .deb's binary, dev PKI of tools/dev-pki.sh) and an
agent whose reflector the guests probe and which probes each guest's reflector through a UDP
hostfwd. Prints per architecture the boot time to multi-user, the time from `systemctl start` to
the first acked batch and the agent's RSS in the guest.

  system_test.py [--debs build/deb] [--arch arm64 ...] [--no-collector]

--no-collector runs without the host collector: every architecture must then fail with missing
batches (tests/run-all.sh runs it once that way for one architecture, expecting exit status 1).
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "system"))
import harness  # noqa: E402
from harness import REGION  # noqa: E402

DRAIN = 5
REPORT_INTERVAL = 2
ARCHES = harness.arches()


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


class Host(harness.World):
    """The host side: PKI, the collector (unless --no-collector) and the agent with a reflector,
    the amd64 packages' binaries."""

    def __init__(self, work, debs, arches, with_collector):
        bins = os.path.join(work, "host")
        for comp in ("agent", "collector"):
            run(["dpkg-deb", "-x", deb_path(debs, comp, ARCHES["native_arch"]), bins])
        args = argparse.Namespace(pki=os.path.join(TOP, "tools/dev-pki.sh"), emulator=[],
                                  agent=os.path.join(bins, "usr/bin/vantage-agent"),
                                  collector=os.path.join(bins, "usr/bin/vantage-collector"))
        super().__init__(work, args, [f"vm-host:{REGION}:host"] + [f"vm-{a}:{REGION}" for a in arches])
        self.issue_guest_collector_cert()
        self.store = harness.Store(self.db, tolerant=True)
        self.collector_port = self.port
        self.reflector_port = harness.free_port()
        self.guest_ports = {a: harness.free_port() for a in arches}
        if with_collector:
            self.start_collector(cert="collector-vm")
        targets = []
        for a, port in self.guest_ports.items():
            targets += ["--udp", f"guest-{a}=127.0.0.1:{port}"]
        self.agent = self.start_agent("vm-host", "--interval", str(REPORT_INTERVAL), "--load-interval", "0",
                                      "--reflector", f"127.0.0.1:{self.reflector_port}", "--drain", "10", "--rate",
                                      "5", *targets, pop="host", spool=os.path.join(work, "host-spool"),
                                      reconnect_max=2)

    def issue_guest_collector_cert(self):
        """The guests reach the collector as 10.0.2.2: a server certificate with that address."""
        key, crt, csr, ext = (os.path.join(self.pki, f"collector-vm.{s}") for s in ("key", "crt", "csr", "ext"))
        if os.path.exists(crt):
            return
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:10.0.2.2,IP:127.0.0.1,DNS:localhost\n")
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        run(["openssl", "req", "-new", "-key", key, "-subj", "/O=Vantage/CN=vantage-collector", "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", f"{self.pki}/ca.crt", "-CAkey", f"{self.pki}/ca.key",
             "-sha256", "-days", "30", "-set_serial", "0x" + os.urandom(12).hex(), "-extfile", ext, "-out", crt])

    def stop(self):
        for p in reversed(self.procs):
            p.stop(timeout=30)


def deb_path(debs, comp, arch):
    found = [f for f in os.listdir(debs) if f.startswith(f"vantage-{comp}_") and f.endswith(f"_{arch}.deb")]
    if not found:
        sys.exit(f"system_test: no vantage-{comp}_*_{arch}.deb in {debs} (make deb)")
    return os.path.join(debs, sorted(found)[-1])


def agent_toml(arch, host, target_name):
    """The guest agent's config: the host's collector and reflector through 10.0.2.2, files where
    the package and the unit put them."""
    return harness.agent_config(
        f"vm-{arch}", [f"10.0.2.2:{host.collector_port}"], "/etc/vantage/pki/ca.crt", "/etc/vantage/pki/agent.crt",
        "/run/credentials/vantage-agent.service/agent.key", "/var/lib/vantage-agent/spool", drain=DRAIN,
        targets=[{"name": target_name, "protocol": "udp", "host": "10.0.2.2", "port": host.reflector_port, "rate": 5}],
        reflector={"enabled": True, "bind": "0.0.0.0", "port": 8627},
        measurement={"report_interval": REPORT_INTERVAL, "load_interval": 1})


def make_payload(work, arch, host, debs, ack_timeout):
    d = os.path.join(work, f"payload-{arch}")
    os.makedirs(d)
    shutil.copy(deb_path(debs, "agent", arch), os.path.join(d, "vantage-agent.deb"))
    shutil.copy(os.path.join(host.pki, "ca.crt"), os.path.join(d, "ca.crt"))
    shutil.copy(os.path.join(host.pki, f"vm-{arch}.crt"), os.path.join(d, "agent.crt"))
    shutil.copy(os.path.join(host.pki, f"vm-{arch}.key"), os.path.join(d, "agent.key"))
    shutil.copy(os.path.join(HERE, "guest-check.sh"), os.path.join(d, "run.sh"))
    for name, target in (("agent.toml", "host"), ("agent-reload.toml", "host-reloaded")):
        with open(os.path.join(d, name), "w") as f:
            f.write(agent_toml(arch, host, target))
    with open(os.path.join(d, "vars.sh"), "w") as f:
        f.write(f"ACK_TIMEOUT={ack_timeout}\nDRAIN={DRAIN}\n")
    tar = os.path.join(work, f"payload-{arch}.tar")
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        for name in sorted(os.listdir(d)):
            t.add(os.path.join(d, name), arcname=name)
    # A disk is whole sectors; tar pads to 10 KiB records anyway.
    return tar


def build_image(arch, cache):
    out = subprocess.run([os.path.join(HERE, "build-image.sh"), arch, cache], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


def boot(arch, image, payload, host, timeout, console_path):
    qemu, machine, console = (f"qemu-system-{ARCHES[arch + '_qemu']}", ARCHES[arch + "_vm_machine"].split(),
                              ARCHES[arch + "_vm_console"])
    argv = ["timeout", "--kill-after=10", str(timeout), qemu, *machine, "-smp", "2", "-m", "1024",
            "-nographic", "-no-reboot", "-snapshot",
            "-kernel", image["kernel"], "-initrd", image["initrd"],
            "-append", f"console={console} root=LABEL=root rw quiet panic=-1 {ARCHES[arch + '_vm_append']}".strip(),
            "-drive", f"file={image['root']},format=raw,if=none,id=root",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={payload},format=raw,if=none,id=payload,readonly=on",
            "-device", "virtio-blk-pci,drive=payload",
            "-netdev", f"user,id=net,hostfwd=udp:127.0.0.1:{host.guest_ports[arch]}-:8627",
            "-device", "virtio-net-pci,netdev=net,romfile="]
    start = time.monotonic()
    with open(console_path, "wb") as out:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode
    with open(console_path, "rb") as f:
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", f.read().decode(errors="replace")).replace("\r", "")
    return rc, time.monotonic() - start, text


GUEST_CHECKS = ["dpkg-install", "unit-active", "first-ack", "reload", "stop", "watchdog"]


def evaluate(arch, rc, text, host, with_collector):
    """Returns (results [(name, ok, detail)], figures {name: value})."""
    results, figures = [], {}
    checks = {m.group(1): (m.group(2) == "ok", m.group(3).strip())
              for m in re.finditer(r"VANTAGE-CHECK name=(\S+) (ok|fail) ?(.*)", text)}
    for m in re.finditer(r"VANTAGE-FIGURE name=(\S+) value=(\d+)", text):
        figures[m.group(1)] = int(m.group(2))
    results.append(("qemu", rc == 0 and "VANTAGE-DONE" in text,
                    f"exit status {rc}" + ("" if "VANTAGE-DONE" in text else ", the guest did not finish")))
    for name in GUEST_CHECKS:
        ok, detail = checks.get(name, (False, "no report on the console"))
        results.append((f"guest {name}", ok, detail))
    agent = f"vm-{arch}"
    batches = host.rows("SELECT count(*), min(seq), max(seq) FROM batches WHERE agent_id = ?", agent)
    n = batches[0][0] if batches else 0
    results.append(("store batches", n > 0, f"{n} batches from {agent}" + (
        f", seq {batches[0][1]}..{batches[0][2]}" if n else
        " (missing batches: the collector's store holds none" + (")" if with_collector else ", no collector ran)"))))
    archs = [r[0] for r in host.rows("SELECT DISTINCT arch FROM load_samples WHERE agent_id = ?", agent)]
    results.append(("store load arch", archs == [arch], f"load samples say {archs or 'nothing'}, expected ['{arch}']"))
    for target in ("host", "host-reloaded"):
        got = host.rows("SELECT count(*), sum(received), min(min_ns) FROM latency_summaries WHERE agent_id = ? "
                        "AND target = ?", agent, target)
        cnt, recv, mn = got[0] if got else (0, 0, None)
        results.append((f"store guest->{target}", bool(cnt) and (recv or 0) > 0,
                        f"{cnt or 0} summaries, {recv or 0} replies" + (f", min RTT {mn / 1e6:.2f} ms" if mn else "")))
    gens = [r[0] for r in host.rows("SELECT DISTINCT config_generation FROM agent_self WHERE agent_id = ? ORDER BY 1",
                                    agent)]
    results.append(("store reload generation", 2 in gens, f"config generations {gens}"))
    return results


def host_to_guest(host, arch):
    got = host.rows("SELECT count(*), sum(received), min(min_ns) FROM latency_summaries WHERE agent_id = 'vm-host' "
                    "AND target = ? AND received > 0", f"guest-{arch}")
    cnt, recv, mn = got[0] if got else (0, 0, None)
    return (("store host->guest", bool(cnt), f"vm-host has {cnt or 0} summaries with {recv or 0} replies from "
             f"guest-{arch}" + (f", min RTT {mn / 1e6:.2f} ms" if mn else "")))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", default=os.path.join(TOP, "build/deb"))
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES["all"]), help="repeatable; default all")
    ap.add_argument("--cache", default=os.environ.get("VANTAGE_VM_CACHE", os.path.join(TOP, "build/vm-cache")))
    ap.add_argument("--timeout", type=int, default=420, help="seconds per QEMU run (default 420)")
    ap.add_argument("--ack-timeout", type=int, default=90, help="seconds the guest waits for an acked batch")
    ap.add_argument("--no-collector", action="store_true", help="run without the host collector (must fail)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("VANTAGE_VM_JOBS", "3")),
                    help="machines running at once (default 3, or $VANTAGE_VM_JOBS)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    arches = args.arch or ARCHES["all"]
    debs = os.path.abspath(args.debs)

    started = time.monotonic()
    # The three builds at once: a cold one waits on the archive as much as on the CPU, and a
    # cached one only asks apt-cache for the current kernel and busybox versions.
    def image(a):
        t = time.monotonic()
        img = build_image(a, args.cache)
        print(f"system_test: {a} image ready in {time.monotonic() - t:.0f}s", flush=True)
        return img

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(arches)) as pool:
        images = dict(zip(arches, pool.map(image, arches)))

    work = tempfile.mkdtemp(prefix="vantage-vm-test.")
    try:
        host = Host(work, debs, arches, not args.no_collector)
    except AssertionError as e:
        sys.exit(f"system_test: {e}")
    failed = False
    table = []
    try:
        def one(a):
            payload = make_payload(work, a, host, debs, args.ack_timeout)
            console = os.path.join(work, f"console-{a}.log")
            print(f"system_test: booting {a}", flush=True)
            rc, took, text = boot(a, images[a], payload, host, args.timeout, console)
            print(f"system_test: {a} powered off after {took:.0f}s", flush=True)
            return rc, took, text, console

        # Much of a guest's run is waiting (report intervals, the watchdog, the drain): with
        # --jobs 3 the machines overlap those waits, at the price of slower emulation each.
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            per_arch = dict(zip(arches, pool.map(one, arches)))
        # The host agent's last probes of the guests reach the store when it drains on stop.
        host.stop()
        for a in arches:
            rc, took, text, console = per_arch[a]
            results = evaluate(a, rc, text, host, not args.no_collector)
            results.append(host_to_guest(host, a))
            figures = {m.group(1): int(m.group(2)) for m in re.finditer(r"VANTAGE-FIGURE name=(\S+) value=(\d+)", text)}
            bad = [r for r in results if not r[1]]
            print(f"=== {a}: QEMU run {took:.0f}s, {len(results) - len(bad)}/{len(results)} checks passed")
            for name, ok, detail in results:
                print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
            if bad:
                failed = True
                print(f"--- {a} console ({console}):")
                print(text[-12000:])
            table.append((a, figures.get("boot_to_multi_user_ms"), figures.get("first_acked_batch_ms"),
                          figures.get("agent_rss_kib"), took))
    finally:
        host.stop()
        # A failed run keeps its logs, except the run without collector, which is meant to fail.
        if args.keep or (failed and not args.no_collector):
            print(f"system_test: logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    fmt = lambda v, scale=1000, unit="s": "-" if v is None else f"{v / scale:.1f} {unit}"
    print("\n| arch | boot to multi-user | start to first acked batch | agent RSS | QEMU run |")
    print("|---|---|---|---|---|")
    for a, boot_ms, ack_ms, rss, took in table:
        print(f"| {a} | {fmt(boot_ms)} | {fmt(ack_ms)} | {fmt(rss, 1024, 'MiB')} | {took:.0f} s |")
    print(f"system_test: {'FAILED' if failed else 'passed'} ({', '.join(arches)}) in {time.monotonic() - started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
