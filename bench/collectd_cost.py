#!/usr/bin/env python3
"""Measurement and arithmetic for bench/collectd_cost.sh (standard library only).

  sample OUT START GUARD_S NAME=PID...   poll the processes until the first one (the agent) exits
  run RESULTS MODE INDEX ...             one run's table, its work checks and its ratios
  summary RESULTS                        the medians of the runs' ratios, and the targets
  scale RESULTS ...                      the agent's own figures at a larger target count
"""
import glob
import json
import os
import sqlite3
import statistics
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
# The targets, for the ICMP run and the shipping run.
TARGETS = {"cpu": 0.5, "hwm": 0.75}


def sample(pid):
    """utime+stime (s) and the /proc/PID/status memory lines (KiB), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    if fields[0] in ("Z", "X"):
        return None
    s = {"cpu_s": (int(fields[11]) + int(fields[12])) / HZ}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            s[key] = int(value.split()[0])
    return s if "VmRSS" in s else None  # a zombie has no memory lines


def icmp_counters(pid):
    """(InEchos, InEchoReps) of PID's network namespace."""
    with open(f"/proc/{pid}/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Icmp:")]
    named = dict(zip(rows[0][1:], rows[1][1:]))
    return int(named["InEchos"]), int(named["InEchoReps"])


def cmd_sample(out, start, guard, *named):
    """The same external measurement for every process, polled every 50 ms; what is kept is the
    last poll before the first process named (the agent) exits, all processes read in that poll."""
    procs = [n.split("=", 1) for n in named]
    deadline = time.monotonic() + float(guard)
    last, end, icmp = None, float(start), {}
    while time.monotonic() < deadline:
        now = time.time()
        samples = {name: sample(pid) for name, pid in procs}
        if samples[procs[0][0]] is None:
            break
        gone = [name for name, s in samples.items() if s is None]
        if gone:
            json.dump({"error": f"{', '.join(gone)} exited early"}, open(out, "w"))
            return 1
        try:
            icmp = {name: icmp_counters(pid) for name, pid in procs}
        except OSError:
            pass
        last, end = samples, now
        time.sleep(0.05)
    else:
        json.dump({"error": f"{procs[0][0]} still running after {guard} s"}, open(out, "w"))
        return 1
    if last is None:
        json.dump({"error": f"{procs[0][0]} exited before the first poll"}, open(out, "w"))
        return 1
    json.dump({"start": float(start), "end": end, "procs": last, "icmp": icmp}, open(out, "w"))
    return 0


def agent_reports(path):
    """Sums of the agent's JSON reports (one line each: with --interval, one per interval)."""
    sent = received = loads = reports = 0
    targets = set()
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        reports += 1
        for t in r["targets"]:
            targets.add(t["target"])
            sent += t["sent"]
            received += t["received"]
        loads += len(r.get("load", []))
    return {"sent": sent, "received": received, "loads": loads, "reports": reports, "targets": len(targets)}


def csv_values(pattern):
    """Values in collectd csv files matching PATTERN (each file starts with an epoch header)."""
    n = 0
    for path in glob.glob(pattern):
        with open(path) as f:
            n += sum(1 for line in f if line.strip() and not line.startswith("epoch"))
    return n


def mib(kib):
    return kib / 1024.0


def ratio(x, y):
    return x / y if y else float("nan")


def cmd_run(results, mode, index, runs, work, targets, rate, seconds, security, write):
    """One run: the table of every process, the work both sides did (checked) and the ratios."""
    targets, rate, seconds, index, runs = int(targets), float(rate), float(seconds), int(index), int(runs)
    m = json.load(open(f"{work}/sample.json"))
    if "error" in m:
        print(f"collectd_cost: {mode} run {index}: {m['error']}", file=sys.stderr)
        return 1
    wall = m["end"] - m["start"]
    procs = m["procs"]
    agent = agent_reports(f"{work}/agent.out")
    a_echos, a_replies = m["icmp"].get("agent", (0, 0))
    c_echos, c_replies = m["icmp"]["collectd"]
    expected = targets * rate * seconds
    problems = []

    # Work done, both sides.
    if agent["targets"] != targets:
        problems.append(f"the agent reported {agent['targets']} targets, not {targets}")
    if agent["sent"] < 0.9 * expected:
        problems.append(f"the agent sent {agent['sent']} probes, expected about {expected:.0f}")
    if agent["received"] < 0.99 * agent["sent"]:
        problems.append(f"the agent's probes were not answered: {agent['received']} of {agent['sent']}")
    if c_echos < 0.9 * targets * rate * wall:
        problems.append(f"collectd sent {c_echos} pings, expected about {targets * rate * wall:.0f}")
    if c_replies < 0.99 * c_echos:
        problems.append(f"collectd's pings were not answered: {c_replies} of {c_echos}")
    if mode != "udp" and a_echos < 0.99 * agent["sent"]:
        problems.append(f"the agent's namespace kernel answered {a_echos} pings, the agent sent {agent['sent']}")
    notes = []
    if mode == "ship":
        db = f"{work}/store.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            batches = con.execute("SELECT count(*) FROM batches").fetchone()[0]
            stored = con.execute("SELECT count(*), coalesce(sum(sent), 0) FROM latency_summaries").fetchone()
            con.close()
        except sqlite3.Error as e:
            batches, stored = 0, (0, 0)
            problems.append(f"the collector's store: {e}")
        log = open(f"{work}/agent.err").read()
        stopped = [line.split("stopped: ", 1)[1] for line in log.splitlines() if "stopped: " in line]
        if batches < 1 or stored[1] < 0.99 * agent["sent"]:
            problems.append(f"the collector stored {batches} batches with {stored[1]} probes sent, "
                            f"the agent sent {agent['sent']}")
        received = csv_values(f"{work}/server-csv/*/ping/ping-*")
        if received < 0.8 * targets * wall:
            problems.append(f"collectd's server received {received} ping values, expected about {targets * wall:.0f}")
        notes.append(f"shipped: the collector stored {batches} batches, {stored[0]} latency summaries covering "
                     f"{stored[1]} probes" + (f" (agent: {stopped[-1]})" if stopped else ""))
        notes.append(f"shipped: collectd's server received {received} ping latency values "
                     f"({csv_values(f'{work}/server-csv/*/*/*')} values in all, network plugin SecurityLevel {security})")
    elif write == "csv":
        written = csv_values(f"{work}/csv/*/ping/ping-*")
        if written < 0.8 * targets * wall:
            problems.append(f"collectd wrote {written} ping latency values, expected about {targets * wall:.0f}")
        notes.append(f"collectd wrote {written} ping latency values to csv")
    else:
        notes.append("collectd: no write plugin (COLLECTD_WRITE=none)")

    names = list(procs)
    print(f"--- {mode} run {index}/{runs}: window {wall:.2f} s (agent --once {seconds:g}); MiB from /proc/PID/status")
    print(f"{'process':<18} {'CPU s':>6} {'% core':>6} {'VmRSS':>6} {'VmHWM':>6} {'RssAnon':>7} {'RssFile':>7} "
          f"{'probes sent':>11} {'answered':>8}")
    work_done = {"agent": (agent["sent"], agent["received"]), "collectd": (c_echos, c_replies)}
    for name in names:
        p = procs[name]
        sent, answered = work_done.get(name, ("", ""))
        print(f"{name:<18} {p['cpu_s']:>6.2f} {100 * p['cpu_s'] / wall:>6.2f} {mib(p['VmRSS']):>6.1f} "
              f"{mib(p['VmHWM']):>6.1f} {mib(p.get('RssAnon', 0)):>7.1f} {mib(p.get('RssFile', 0)):>7.1f} "
              f"{sent:>11} {answered:>8}")
    a, c = procs["agent"], procs["collectd"]
    r = {key: ratio(a[field], c[field]) for key, field in
         (("cpu", "cpu_s"), ("hwm", "VmHWM"), ("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}
    print(f"{'agent/collectd':<18} {r['cpu']:>5.2f}x {'':>6} {r['rss']:>5.2f}x {r['hwm']:>5.2f}x "
          f"{r['anon']:>6.2f}x {r['file']:>6.2f}x {ratio(agent['sent'] / seconds, c_echos / wall):>10.2f}x per s")
    how = {"udp": "UDP echo against the reflector", "icmp": "ICMP, raw socket, answered by its namespace's kernel",
           "ship": "ICMP as in icmp, shipping to the collector over mutual TLS"}[mode]
    print(f"agent: {how}; {agent['targets']} targets, {agent['sent'] / targets / seconds:.2f} probes/s per target "
          f"over its --once, {agent['reports']} reports, {agent['loads']} host load samples"
          + (f"; its namespace's kernel counted {a_echos} echo requests, {a_replies} replies" if mode != "udp" else ""))
    print(f"collectd: ping plugin (ICMP, liboping raw socket); {c_echos / targets / wall:.2f} probes/s per target "
          f"over the window, counted by its namespace's kernel (echo requests received, replies received)")
    for note in notes:
        print(note)
    for problem in problems:
        print(f"collectd_cost: {mode} run {index}: {problem}", file=sys.stderr)
    with open(results, "a") as f:
        f.write(json.dumps({"mode": mode, "index": index, "ratios": r, "ok": not problems}) + "\n")
    return 1 if problems else 0


def cmd_summary(results):
    rows = [json.loads(line) for line in open(results)]
    modes = list(dict.fromkeys(r["mode"] for r in rows if "mode" in r))
    desc = {"udp": "UDP echo vs collectd's ICMP ping", "icmp": "ICMP vs ICMP",
            "ship": "ICMP vs ICMP, both shipping to a local receiver"}
    print("=== medians of the per-run ratios (agent / collectd; reflector, collector and collectd's server not counted)")
    for mode in modes:
        runs = [r for r in rows if r.get("mode") == mode]
        for key, what in (("cpu", "CPU"), ("hwm", "VmHWM"), ("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
            values = [r["ratios"][key] for r in runs]
            med = statistics.median(values)
            line = (f"{mode}: agent {what} / collectd {what} = {med:.2f}x (median of {len(values)}: "
                    f"{' '.join(f'{v:.2f}' for v in values)})")
            if key in TARGETS:
                goal = TARGETS[key]
                if mode in ("icmp", "ship"):
                    line += f"; target <= {goal}x: {'met' if med <= goal else 'NOT met'}"
            print(line)
        print(f"{mode}: {desc.get(mode, mode)}")
    return 0


def cmd_scale(results, work, targets, rate, seconds):
    targets, rate, seconds = int(targets), float(rate), float(seconds)
    m = json.load(open(f"{work}/sample.json"))
    if "error" in m:
        print(f"collectd_cost: scale {targets}: {m['error']}", file=sys.stderr)
        return 1
    wall = m["end"] - m["start"]
    agent = agent_reports(f"{work}/agent.out")
    a = m["procs"]["agent"]
    ok = agent["sent"] >= 0.9 * targets * rate * seconds and agent["received"] >= 0.99 * agent["sent"]
    line = {"targets": targets, "rate": rate, "wall": wall, "sent": agent["sent"], "received": agent["received"],
            "cpu_s": a["cpu_s"], "cpu_pct": 100 * a["cpu_s"] / wall, "rss": mib(a["VmRSS"]), "hwm": mib(a["VmHWM"]),
            "anon": mib(a.get("RssAnon", 0)), "file": mib(a.get("RssFile", 0)),
            "reflector_cpu_pct": 100 * m["procs"]["reflector"]["cpu_s"] / wall, "ok": ok}
    with open(results, "a") as f:
        f.write(json.dumps({"scale": line}) + "\n")
    if not ok:
        print(f"collectd_cost: scale {targets}: the agent sent {agent['sent']}, {agent['received']} answered "
              f"(expected about {targets * rate * seconds:.0f})", file=sys.stderr)
    return 0 if ok else 1


def cmd_scale_table(results):
    rows = [json.loads(line)["scale"] for line in open(results) if '"scale"' in line]
    if not rows:
        return 0
    print("=== the agent alone: UDP echo against one reflector on 127.0.x.y, 1 probe/s per target, host load every 1 s")
    print(f"{'targets':>7} {'window s':>8} {'probes sent':>11} {'answered':>8} {'CPU s':>6} {'% core':>6} "
          f"{'VmRSS':>6} {'VmHWM':>6} {'RssAnon':>7} {'RssFile':>7} {'reflector % core':>16}")
    for r in rows:
        print(f"{r['targets']:>7} {r['wall']:>8.2f} {r['sent']:>11} {r['received']:>8} {r['cpu_s']:>6.2f} "
              f"{r['cpu_pct']:>6.2f} {r['rss']:>6.1f} {r['hwm']:>6.1f} {r['anon']:>7.1f} {r['file']:>7.1f} "
              f"{r['reflector_cpu_pct']:>16.2f}")
    return 0


if __name__ == "__main__":
    commands = {"sample": cmd_sample, "run": cmd_run, "summary": cmd_summary, "scale": cmd_scale,
                "scale-table": cmd_scale_table}
    sys.exit(commands[sys.argv[1]](*sys.argv[2:]))
