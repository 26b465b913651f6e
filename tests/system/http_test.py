#!/usr/bin/env python3
"""The collector's HTTP side with real processes on loopback: a collector with --http, three
agents as PoPs fra1, ams1 and sin1 probing each other's reflectors through delay relays (8, 160
and 170 ms of round trip, as in `make demo`), and then:

  prometheus   a real Prometheus (/usr/bin/prometheus, its own config and TSDB in a temp dir)
               scrapes /metrics every second; its query API must return every PoP pair's p50 RTT
               (> 0 and < 1 s), loss 0 and batches stored > 0; every agent's clock state, and one
               one-way status of four set per target that carries one.
  status-page  headless Chromium loads the status page; the dumped DOM must hold a matrix cell
               with a number for every ordered PoP pair; a screenshot is left in the build tree.
  residency    an eu-central agent is refused by a collector serving only ap-southeast: the reason
               is in both logs and /metrics counts vantage_collector_rejects_total{reason="region"}.
  grafana      every PromQL expression of packaging/grafana/vantage-dashboard.json names metrics
               and labels that a real scrape of this collector has.
  matrix300    300 synthetic PoPs (tests/tools/synthetic_fleet.py: a certificate, a TLS session and
               real Batch frames each, so the ingest, store and live view are the real ones) fill the
               matrix; /api/matrix has all 89,700 pairs; /api/pair returns the hour of a pair and
               400 for bad parameters; headless Chromium (driven over its debugging pipe) paints
               every pair on the canvas, each one's pixel read back in the page with the colour its
               figures call for, a hover shows the pair's figures and a click its drill-down; a
               screenshot is left in the build tree (matrix-300.png).

Run: http_test.py --agent BIN --collector BIN --pki tools/dev-pki.sh --relay tests/tools/delay_relay.py
     [--only NAME] [--out DIR] [--flatc FLATC] [-- EMULATOR WORDS...]. Exits 77 when a host program it
     needs is missing.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import harness
from harness import REGION, Skip, free_port, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import cdp_pipe  # noqa: E402
import synthetic_fleet  # noqa: E402

POPS = ["fra1", "ams1", "sin1"]
RTT_MS = {("fra1", "ams1"): 8, ("fra1", "sin1"): 160, ("ams1", "sin1"): 170}
DASHBOARD = os.path.join(harness.TOP, "packaging", "grafana", "vantage-dashboard.json")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers, r.read().decode()


class World(harness.World):
    """A collector with HTTP and three PoP agents probing each other through delay relays."""

    def __init__(self, workdir, args):
        # agent:region:pop, as the certificates bind them (the PoP is also what the agents claim).
        super().__init__(workdir, args, [f"{p}-edge-01:{REGION}:{p}" for p in POPS] + ["fra2-edge-01:eu-central:fra2"])

    def start_collector(self, region=REGION, name="collector"):
        port, http_port = free_port(), free_port()
        c = super().start_collector("--http", f"127.0.0.1:{http_port}", name=name, region=region, port=port,
                                    db=os.path.join(self.dir, f"{name}.db"), ready="http on")
        c.port, c.http = port, f"http://127.0.0.1:{http_port}"
        return c

    def start_fleet(self):
        self.collector = self.start_collector()
        reflector = {p: free_port() for p in POPS}
        relays, relay_port = [], {}
        for a in POPS:
            for b in POPS:
                if a == b:
                    continue
                relay_port[(a, b)] = free_port()
                rtt = RTT_MS.get((a, b)) or RTT_MS[(b, a)]
                relays.append(f"{relay_port[(a, b)]}:127.0.0.1:{reflector[b]}:{rtt}")
        relay = self.spawn("relay", [sys.executable, self.args.relay, *relays], emulate=False)
        wait_for(lambda: "relays ready" in relay.text(), 20, "the delay relays")
        for pop in POPS:
            targets = []
            for other in POPS:
                if other != pop:
                    targets += ["--udp", f"{other}=127.0.0.1:{relay_port[(pop, other)]}"]
            self.start_agent(f"{pop}-edge-01", pop, self.collector,
                             ["--reflector", f"127.0.0.1:{reflector[pop]}", *targets])

    def start_agent(self, agent_id, pop, collector, extra, region=REGION):
        return super().start_agent(agent_id, "--interval", "1", "--load-interval", "0.25", "--rate", "10",
                                   "--timeout", "1000", *extra, region=region, pop=pop,
                                   collectors=[f"127.0.0.1:{collector.port}"])

    def metrics(self, collector=None):
        status, headers, body = http_get((collector or self.collector).http + "/metrics")
        assert status == 200, status
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
        return body

    def wait_for_matrix(self, timeout=60):
        """Until /api/status has a cell with samples for every ordered PoP pair."""
        def full():
            s = json.loads(http_get(self.collector.http + "/api/status")[2])
            pairs = {(c["src"], c["dst"]) for c in s["cells"] if c["p50_ms"] > 0}
            return len(pairs) == len(POPS) * (len(POPS) - 1) and s
        return wait_for(full, timeout, "a full PoP matrix in /api/status")


def parse_scrape(text):
    """{metric name: set of label names} from Prometheus text, checking the HELP/TYPE lines."""
    series, typed = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, f"not a sample line: {line!r}"
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series, typed


def scenario_prometheus(world):
    """A real Prometheus scrapes the collector; its query API returns every pair's p50."""
    prometheus = shutil.which("prometheus")
    if not prometheus:
        raise Skip("no prometheus (Debian package prometheus)")
    world.start_fleet()
    world.wait_for_matrix()
    port = free_port()
    target = world.collector.http.removeprefix("http://")
    config = os.path.join(world.dir, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: vantage-collector
    static_configs:
      - targets: ['{target}']
""")
    world.spawn("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={world.dir}/tsdb",
                               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], emulate=False)
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(q):
        status, _, body = http_get(api + urllib.parse.quote(q))
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def all_pairs():
        r = query('vantage_rtt_seconds{quantile="0.5"}')
        return len({(s["metric"]["pop"], s["metric"]["target"]) for s in r}) == 6 and r
    p50 = wait_for(all_pairs, 60, "Prometheus to return p50 for all six PoP pairs")
    lines = []
    for s in sorted(p50, key=lambda s: (s["metric"]["pop"], s["metric"]["target"])):
        src, dst, v = s["metric"]["pop"], s["metric"]["target"], float(s["value"][1])
        rtt = RTT_MS.get((src, dst)) or RTT_MS[(dst, src)]
        assert 0 < v < 1, f"{src}->{dst}: implausible p50 {v}"
        # The relay adds rtt ms (half each way, +-0.25 ms jitter); loopback and the agent add a little.
        assert rtt / 1000 * 0.9 < v < rtt / 1000 + 0.1, f"{src}->{dst}: p50 {v * 1000:.1f} ms, relay adds {rtt} ms"
        assert s["metric"]["region"] == REGION and s["metric"]["protocol"] == "udp_echo", s["metric"]
        lines.append(f"{src}->{dst} {v * 1000:.1f} ms")
    loss = query("vantage_loss_ratio")
    assert len(loss) == 6 and all(float(s["value"][1]) == 0 for s in loss), f"loss: {loss}"
    stored = query("sum(vantage_collector_batches_stored_total)")
    assert stored and float(stored[0]["value"][1]) > 0, stored
    region = query('vantage_collector_rejects_total{reason="region"}')
    assert region and float(region[0]["value"][1]) == 0, region
    load = query("vantage_host_cpu_busy_ratio")
    assert {s["metric"]["pop"] for s in load} == set(POPS), load
    hist = query('sum(vantage_collector_sink_latency_seconds_count{sink="sqlite"})')
    assert hist and float(hist[0]["value"][1]) > 0, hist
    up = query('up{job="vantage-collector"}')
    assert up and up[0]["value"][1] == "1", up
    # Each agent's clock as its kernel (or [clock] assume) describes it: synchronised or not, both
    # errors, one source. Which state depends on the host, so only its shape is checked.
    clock = wait_for(lambda: (r := query("vantage_agent_clock_synchronised"))
                     and {s["metric"]["pop"] for s in r} >= set(POPS) and r,
                     30, "every agent's clock state in Prometheus")
    assert all(s["value"][1] in ("0", "1") for s in clock), clock
    errors = query("vantage_agent_clock_error_seconds")
    assert {(s["metric"]["pop"], s["metric"]["kind"]) for s in errors} >= {(p, k) for p in POPS
                                                                            for k in ("estimated", "maximum")}, errors
    sources = query("vantage_agent_clock_source_info")
    assert {s["metric"]["pop"] for s in sources} >= set(POPS) and all(s["value"][1] == "1" for s in sources), sources
    # One-way status per target that carries it: exactly one of the four statuses is 1.
    statuses = {}
    for s in query("vantage_one_way_status"):
        m = s["metric"]
        assert m["status"] in ("reported", "unsynchronised", "bound_too_large", "not_measured"), m
        statuses.setdefault((m["agent"], m["target"], m["protocol"]), []).append((m["status"], s["value"][1]))
    for key, values in statuses.items():
        assert len(values) == 4 and sum(v == "1" for _, v in values) == 1, (key, values)
    shown = sorted({next(st for st, v in values if v == "1") for values in statuses.values()})
    return (f"Prometheus p50: {', '.join(lines)}; loss 0 on 6 pairs; batches stored "
            f"{float(stored[0]['value'][1]):.0f}; sink histogram count {float(hist[0]['value'][1]):.0f}; "
            f"clock synchronised {[s['value'][1] for s in clock]}; one-way status on {len(statuses)} targets: {shown}")


def scenario_status_page(world):
    """Headless Chromium renders the status page: a numeric cell for every ordered PoP pair."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise Skip("no chromium (Debian package chromium)")
    world.start_fleet()
    world.wait_for_matrix()
    status, headers, page = http_get(world.collector.http + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), headers
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page), "the page loads something external"
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--hide-scrollbars", f"--user-data-dir={world.dir}/chromium",
              "--virtual-time-budget=8000", "--run-all-compositor-stages-before-draw"]
    dom = subprocess.run(common + ["--dump-dom", world.collector.http + "/"], capture_output=True, text=True,
                         timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    cells = {}
    for m in re.finditer(r'<td[^>]*class="cell[^"]*"[^>]*>', html):
        tag = m.group(0)
        attrs = dict(re.findall(r'(data-[a-z0-9-]+)="([^"]*)"', tag))
        if "data-src" in attrs:
            cells[(attrs["data-src"], attrs["data-dst"])] = attrs
    missing = [(a, b) for a in POPS for b in POPS if a != b and (a, b) not in cells]
    assert not missing, f"no matrix cell for {missing}; cells {sorted(cells)}\n{html[:3000]}"
    shown = []
    for (a, b), attrs in sorted(cells.items()):
        v = float(attrs["data-p50"])
        assert 0 < v < 1000, f"{a}->{b}: data-p50 {attrs['data-p50']}"
        assert float(attrs["data-loss"]) == 0, attrs
        shown.append(f"{a}->{b} {v:.1f}")
    for pop in POPS:
        assert f'data-pop="{pop}"' in html, f"no load card for {pop}"
    assert html.count('<tr data-agent="') == len(POPS), "the agents table is incomplete"
    out = world.args.out or world.dir
    os.makedirs(out, exist_ok=True)
    png = os.path.join(os.path.abspath(out), "status-page.png")
    if os.path.exists(png):
        os.unlink(png)
    shot = subprocess.run(common + [f"--screenshot={png}", "--window-size=1280,900", world.collector.http + "/"],
                          capture_output=True, text=True, timeout=90)
    assert shot.returncode == 0 and os.path.getsize(png) > 10_000, shot.stderr[-2000:]
    print(f"screenshot: {png}")
    return f"matrix cells (p50 ms): {', '.join(shown)}; screenshot {png}"


def scenario_residency(world):
    """An eu-central agent at a collector serving only ap-southeast: refused, logged, counted."""
    collector = world.start_collector(region="ap-southeast", name="collector-apse")
    agent = world.start_agent("fra2-edge-01", "fra2", collector, ["--no-reflector"])
    wait_for(lambda: "refused this agent" in agent.text(), 60, "the agent to log its refusal")
    wait_for(lambda: "region 'eu-central' is not served here" in collector.text(), 10,
             "the collector to log the region refusal")

    def counted():
        for line in world.metrics(collector).splitlines():
            if line.startswith('vantage_collector_rejects_total{reason="region"} '):
                return float(line.split()[-1]) >= 1 and line
        return False
    line = wait_for(counted, 20, "vantage_collector_rejects_total{reason=\"region\"} >= 1")
    stored = [l for l in world.metrics(collector).splitlines() if l.startswith("vantage_collector_batches_stored_total ")]
    assert stored == ["vantage_collector_batches_stored_total 0"], stored
    agent_line = next(l for l in agent.text().splitlines() if "refused this agent" in l)
    collector_line = next(l for l in collector.text().splitlines() if "is not served here" in l)
    return f"agent: {agent_line.strip()!r}; collector: {collector_line.strip()!r}; /metrics: {line}"


def promql_parts(expr):
    """Metric names, and labels per selector and per by()/without() clause, in a PromQL string."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings say nothing here
    selectors = [(m.group(1), set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)', m.group(2) or "")))
                 for m in re.finditer(r'\b(vantage_[a-zA-Z0-9_:]*|up)\b\s*(?:\{([^}]*)\})?', expr)]
    grouping = [set(x.strip() for x in m.group(1).split(",") if x.strip())
                for m in re.finditer(r'\b(?:by|without)\s*\(([^)]*)\)', expr)]
    return selectors, grouping


def scenario_grafana(world):
    """Every metric and label the dashboard's PromQL uses exists in a real scrape."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str) and v.strip():
                    exprs.append(v)
                elif k == "definition" and isinstance(v, str) and v.startswith("label_values("):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(dashboard)
    assert len(exprs) >= 8, f"only {len(exprs)} expressions in the dashboard"
    world.start_fleet()
    world.wait_for_matrix()
    time.sleep(1.5)  # one more batch: every family has samples
    series, typed = parse_scrape(world.metrics())
    # Prometheus adds the target's labels to every series it scrapes, and has its own `up`.
    for labels in series.values():
        labels |= {"job", "instance"}
    series["up"] = {"job", "instance"}
    problems, names = [], set()
    for expr in exprs:
        e = re.sub(r'\$\{?[a-zA-Z_]+\}?', "x", expr)  # Grafana variables and $__rate_interval
        e = re.sub(r'label_values\(\s*([a-zA-Z0-9_:]+)\s*,\s*([a-zA-Z_]+)\s*\)', r'\1{\2=""}', e)
        selectors, grouping = promql_parts(e)
        if not selectors:
            problems.append(f"no Vantage metric in {expr!r}")
        used = set()
        for name, labels in selectors:
            names.add(name)
            if name not in series:
                problems.append(f"{name} (in {expr!r}) is not in the scrape")
                continue
            used |= series[name]
            for label in labels - series[name]:
                problems.append(f"label {label} of {name} (in {expr!r}) is not in the scrape")
        for labels in grouping:
            for label in labels - used:
                problems.append(f"by/without label {label} (in {expr!r}) is on none of its metrics")
    assert not problems, "\n".join(problems)
    return f"{len(exprs)} expressions, {len(names)} metrics, all in a real scrape of {len(series)} series names"


def http_status(url):
    """(status, parsed JSON body) of a GET, for answers that are errors too."""
    try:
        status, _, body = http_get(url)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    return status, json.loads(body)


def scenario_matrix300(world):
    """300 synthetic PoPs through the real ingest: every pair painted, a pair's hour from the store."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise Skip("no chromium (Debian package chromium)")
    flatc = world.args.flatc or shutil.which("flatc")
    if not flatc:
        raise Skip("no flatc (Debian package flatbuffers-compiler)")
    n = 300
    world.collector = world.start_collector()
    fleet = subprocess.run([sys.executable, synthetic_fleet.__file__, "--pki", world.pki, "--port",
                            str(world.collector.port), "--pops", str(n), "--flatc", flatc,
                            "--workdir", os.path.join(world.dir, "frames")],
                           capture_output=True, text=True, timeout=600)
    assert fleet.returncode == 0, fleet.stderr[-3000:]
    delivered = json.loads(fleet.stdout)
    pops = delivered["pops"]
    assert len(pops) == n and delivered["stored"] == n + 60, delivered["stored"]

    m = json.loads(http_get(world.collector.http + "/api/matrix")[2])
    pairs = n * (n - 1)
    assert m["count"] == pairs and len(m["rows"]) == n and m["pops"] == pops, (m["count"], len(m["rows"]))
    expected = synthetic_fleet.figures(pops)
    for i in range(0, pairs, 997):  # a sample: the live view's figures are the batches'
        src, dst = m["pops"][m["src"][i]], m["pops"][m["dst"][i]]
        p50, p99, lost = expected[(src, dst)]
        assert abs(m["p50_ms"][i] - p50 / 1e6) < 1e-3 and abs(m["p99_ms"][i] - p99 / 1e6) < 1e-3, (src, dst, i)
        assert m["loss"][i] == lost / 100 and m["samples"][i] == 100 - lost and m["agents"][i] == 1, (src, dst)

    # The drill-down: pop000 sent a batch a minute for the last hour, then its newest.
    api = world.collector.http + "/api/pair"
    status, d = http_status(f"{api}?from=pop000&to=pop001")
    assert status == 200 and d["from"] == "pop000" and d["to"] == "pop001" and d["protocol"] == "udp_echo", d
    assert 55 <= d["count"] <= 61 and d["step_s"] == 1 and d["until"] - d["since"] == 3600, d
    assert all(len(d[k]) == d["count"] for k in ("t", "p50_ms", "p99_ms", "loss", "samples", "agents")), d
    assert d["t"] == sorted(d["t"]) and all(d["since"] <= t < d["until"] for t in d["t"]), d["t"]
    assert abs(d["p50_ms"][-1] - expected[("pop000", "pop001")][0] / 1e6) < 1e-3, d["p50_ms"][-1]
    assert all(0 < v < 1000 for v in d["p50_ms"]) and set(d["agents"]) == {1}, d
    status, d = http_status(f"{api}?from=pop001&to=pop000&since={d['since']}&until={d['until']}")
    assert status == 200 and d["count"] == 1, (status, d)  # pop001 sent its newest batch only
    status, d = http_status(f"{api}?from=pop000&to=pop001&since=0&until=86400")
    assert status == 200 and d["count"] == 0 and d["step_s"] == 24, (status, d)
    hostile = urllib.parse.quote('</script><b x="1">‮')
    status, _, raw = http_get(f"{api}?from={hostile}&to=pop001")
    assert status == 200 and "<" not in raw and json.loads(raw)["from"] == '</script><b x="1">‮', raw
    bad = {"to missing": "from=pop000", "from empty": "from=&to=pop001", "since not a number": "from=a&to=b&since=x",
           "negative": "from=a&to=b&since=-5", "until before since": "from=a&to=b&since=100&until=50",
           "over a week": "from=a&to=b&since=0&until=700000", "invalid UTF-8": "from=%C3%28&to=b",
           "control character": "from=a%0Ab&to=b", "repeated": "from=a&from=b&to=c", "unknown": "from=a&to=b&x=1",
           "protocol": "from=a&to=b&protocol=smtp", "too long": "from=" + "a" * 300 + "&to=b"}
    for why, query in bad.items():
        status, body = http_status(f"{api}?{query}")
        assert status == 400 and body["error"], f"{why}: {status} {body}"

    # The page: every pair painted, read back, hovered and clicked, in a real browser.
    out = os.path.abspath(world.args.out or world.dir)
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "matrix-300.png")
    if os.path.exists(png):
        os.unlink(png)
    with cdp_pipe.Browser(chromium, os.path.join(world.dir, "chromium"), 1400, 1500) as browser:
        page = browser.new_page()
        page.navigate(world.collector.http + "/#verify")
        page.wait_for("document.body && document.body.dataset.matrixVerified", timeout=60)
        data = page.evaluate("Object.assign({}, document.body.dataset)")
        assert int(data["matrixCells"]) == pairs and int(data["matrixVerified"]) == pairs, data
        assert data["matrixRows"] == str(n) and data["matrixCols"] == str(n) and data["matrixUnresolved"] == "0", data
        assert page.evaluate("document.querySelectorAll('#matrix td').length") == 0, "a table of 90,000 cells"
        assert page.evaluate("document.querySelectorAll('#agents tbody tr').length") == n
        # The pair pop002 -> pop007: its cell's centre, hovered and clicked.
        x, y = page.evaluate("(() => { const b = document.getElementById('matrix-canvas').getBoundingClientRect();"
                             " return [b.left + layout.labelW + layout.s * 7.5, b.top + layout.labelH + layout.s * 2.5]; })()")
        page.mouse("mouseMoved", x, y)
        tip = page.wait_for("document.getElementById('matrix-tip').textContent")
        p50, p99, _ = expected[("pop002", "pop007")]
        fmt = lambda ms: f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"  # noqa: E731
        assert tip.startswith("\u2068pop002\u2069 \u2192 \u2068pop007\u2069") and f"p50 {fmt(p50 / 1e6)} ms" in tip \
            and f"p99 {fmt(p99 / 1e6)} ms" in tip and "samples" in tip and "1 agent" in tip, repr(tip)
        page.mouse("mousePressed", x, y)
        page.mouse("mouseReleased", x, y)
        points = page.wait_for("document.body.dataset.drillPoints", timeout=30)
        title = page.evaluate("document.getElementById('drill-title').textContent")
        assert points == "1" and "pop002" in title and "pop007" in title, (points, title)
        shot = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, timeout=60)
    with open(png, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    assert os.path.getsize(png) > 10_000, os.path.getsize(png)
    print(f"screenshot: {png}")
    return (f"{n} PoPs delivered in {delivered['seconds']} s; /api/matrix {pairs} pairs; /api/pair {d['count']} "
            f"points and 400 for {len(bad)} bad queries; Chromium painted and read back {data['matrixVerified']} "
            f"cells ({data['matrixCellPx']} px), first paint at {float(data['matrixFirstPaintMs']):.0f} ms; "
            f"hover and drill-down work; screenshot {png}")


SCENARIOS = {
    "prometheus": scenario_prometheus,
    "status-page": scenario_status_page,
    "residency": scenario_residency,
    "grafana": scenario_grafana,
    "matrix300": scenario_matrix300,
}


def add_args(parser):
    parser.add_argument("--out", help="where the status page screenshot goes (default: the temp dir)")
    parser.add_argument("--flatc", help="the host's flatc, to write the synthetic fleet's frames (matrix300)")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, World, add_args=add_args, binaries=("agent", "collector", "pki", "relay")))
