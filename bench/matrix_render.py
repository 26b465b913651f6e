#!/usr/bin/env python3
"""The status page's PoP matrix at fleet size: a real collector filled with N synthetic PoPs
(tests/tools/synthetic_fleet.py, through its TLS ingest), then headless Chromium (over its
debugging pipe) loads the page RUNS times; per load, milliseconds from navigation start
(performance.timeOrigin) to the matrix's JSON fetched and to the canvas painted, and the median.
Beside it, the server's side alone: GET /api/matrix from Python, RUNS times.

  bench/matrix_render.py --collector BUILD/collector/vantage-collector [--pops 300] [--runs 9]
                         [--chromium /usr/bin/chromium] [--flatc flatc]

A release build gives the product's figures (the bench preset). Exits 2 when a program is missing.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "tools"))
sys.path.insert(0, os.path.join(TOP, "tests", "system"))
import cdp_pipe  # noqa: E402
from harness import free_port  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--pops", type=int, default=300)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--flatc", default=shutil.which("flatc") or "flatc")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    for program in (args.collector, args.chromium, args.flatc, shutil.which("openssl")):
        if not program or not shutil.which(program):
            print(f"matrix_render: {program} not found", file=sys.stderr)
            return 2
    work = tempfile.mkdtemp(prefix="vantage-matrix-render.")
    collector = None
    try:
        pki = os.path.join(work, "pki")
        subprocess.run([os.path.join(TOP, "tools", "dev-pki.sh"), pki], check=True, stdout=subprocess.DEVNULL)
        port, http_port = free_port(), free_port()
        log = open(os.path.join(work, "collector.log"), "w")
        collector = subprocess.Popen(
            [args.collector, "serve", "--db", os.path.join(work, "store.db"), "--region", "eu-central",
             "--ca", f"{pki}/ca.crt", "--cert", f"{pki}/collector.crt", "--key", f"{pki}/collector.key",
             "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http_port}"], stdout=log, stderr=log)
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/api/status?cells=0", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        started = time.monotonic()
        subprocess.run([sys.executable, os.path.join(TOP, "tests", "tools", "synthetic_fleet.py"), "--pki", pki,
                        "--port", str(port), "--pops", str(args.pops), "--flatc", args.flatc,
                        "--workdir", os.path.join(work, "frames")], check=True, stdout=subprocess.DEVNULL)
        fill_s = time.monotonic() - started

        server_ms, size = [], 0
        for _ in range(args.runs):
            t = time.monotonic()
            body = urllib.request.urlopen(base + "/api/matrix", timeout=30).read()
            server_ms.append((time.monotonic() - t) * 1000)
            size = len(body)
        cells = json.loads(body)["count"]

        fetched, painted = [], []
        with cdp_pipe.Browser(args.chromium, os.path.join(work, "chromium"), args.width, 1400) as browser:
            for run in range(args.runs + 1):  # the first load warms the browser up: not counted
                page = browser.new_page()
                page.navigate(base + "/")
                page.wait_for("document.body && document.body.dataset.matrixFirstPaintMs", timeout=60)
                d = page.evaluate("Object.assign({}, document.body.dataset)")
                assert int(d["matrixCells"]) == cells, d
                if run > 0:
                    fetched.append(float(d["matrixFetchedMs"]))
                    painted.append(float(d["matrixFirstPaintMs"]))
                page.close()
        print(f"matrix_render: {args.pops} PoPs, {cells} pairs painted at {d['matrixCellPx']} px a cell; "
              f"/api/matrix {size / 1e6:.1f} MB; filled through the ingest in {fill_s:.1f} s")
        print(f"{'':24}{'median':>10}{'min':>10}{'max':>10}")
        for name, values in (("GET /api/matrix (ms)", server_ms), ("page: JSON fetched (ms)", fetched),
                             ("page: matrix painted (ms)", painted)):
            print(f"{name:24}{statistics.median(values):10.0f}{min(values):10.0f}{max(values):10.0f}")
        print(f"runs: {args.runs} (after one warm-up load); painted = performance.now() after putImageData, "
              f"from navigation start")
        return 0
    finally:
        if collector:
            collector.terminate()
            collector.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
