#include "collector/http/status_page.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace vantage::collector::http {

namespace {

// The page. Rows of the matrix are the measuring agents' PoPs, columns the targets' names (named
// after the PoP they reach in a fleet that probes itself); colour is RTT on a log scale from
// 1 ms (green) to 300 ms (red); a cell with loss gets a red corner and its loss percentage.
constexpr std::string_view kPage = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Vantage status</title>
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --muted: #667085; --line: #d9dde5; --card: #fff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         background: var(--bg); color: var(--fg); }
  header { display: flex; align-items: baseline; gap: 24px; padding: 14px 24px; background: #1d2330; color: #fff; }
  header h1 { font-size: 18px; margin: 0; }
  header .stat { color: #c8cfdc; }
  header .stat b { color: #fff; }
  main { padding: 16px 24px; display: grid; gap: 16px; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 10px; display: flex; align-items: center; gap: 12px; }
  .switch button { font: inherit; padding: 2px 10px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
  .switch button:first-child { border-radius: 6px 0 0 6px; }
  .switch button:last-child { border-radius: 0 6px 6px 0; }
  .switch button.on { background: #1d2330; color: #fff; border-color: #1d2330; }
  table { border-collapse: collapse; }
  #matrix th { font-weight: 600; padding: 6px 10px; color: var(--muted); }
  #matrix th.src { text-align: right; }
  #matrix td.cell { width: 96px; height: 52px; text-align: center; position: relative; border: 2px solid #fff;
                    font-variant-numeric: tabular-nums; font-size: 16px; font-weight: 600; color: #111; }
  #matrix td.cell small { display: block; font-size: 11px; font-weight: 400; }
  #matrix td.self { background: #eceef2; color: var(--muted); }
  #matrix td.none { background: #f3f4f6; color: var(--muted); }
  #matrix td.loss::after { content: ""; position: absolute; top: 0; right: 0; border-style: solid;
                           border-width: 0 14px 14px 0; border-color: transparent #c00 transparent transparent; }
  #matrix td.loss small { color: #a00; font-weight: 600; }
  .corner { font-size: 11px; color: var(--muted); }
  .legend { display: flex; align-items: center; gap: 8px; margin-top: 10px; color: var(--muted); font-size: 12px; }
  .legend .bar { width: 220px; height: 10px; border-radius: 3px; }
  .pops { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
  .pop { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
  .pop .name { font-weight: 600; }
  .pop .figs { color: var(--muted); font-size: 12px; }
  .pop svg { display: block; margin-top: 4px; }
  #agents td, #agents th { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; }
  #agents td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .stale { color: #b42318; font-weight: 600; }
  .err { color: #b42318; }
</style>
</head>
<body>
<header>
  <h1>Vantage</h1>
  <span class="stat">agents <b id="n-agents">0</b></span>
  <span class="stat">connections <b id="n-conn">0</b></span>
  <span class="stat">batches stored <b id="n-stored">0</b></span>
  <span class="stat" id="updated">loading...</span>
</header>
<main>
  <section>
    <h2>PoP latency matrix (RTT, ms)
      <span class="switch"><button id="q-p50" class="on" type="button">p50</button><button id="q-p99" type="button">p99</button></span>
    </h2>
    <table id="matrix"><tbody></tbody></table>
    <div class="legend"><span>1 ms</span><span class="bar" id="legend-bar"></span><span>300 ms</span>
      <span>&#9698; loss in the last interval</span></div>
  </section>
  <section>
    <h2>Load per PoP (CPU busy)</h2>
    <div class="pops" id="pops"></div>
  </section>
  <section class="wide">
    <h2>Agents</h2>
    <table id="agents"><thead><tr><th>agent</th><th>region</th><th>PoP</th><th>last seen</th><th>seq</th>
      <th>RSS</th><th>spool</th><th>reconnects</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
let quantile = "p50";
let last = null;
const protoRank = { udp_echo: 0, tcp_connect: 1, icmp: 2 };

function colour(ms) {
  // log scale: 1 ms -> hue 130 (green), 300 ms -> hue 0 (red)
  const t = Math.min(1, Math.max(0, Math.log(Math.max(ms, 1)) / Math.log(300)));
  return "hsl(" + Math.round(130 * (1 - t)) + ", 65%, " + Math.round(72 - 10 * t) + "%)";
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmtMs(ms) { return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2); }
function fmtAge(s) { return s < 90 ? s.toFixed(0) + " s" : s < 5400 ? (s / 60).toFixed(0) + " min" : (s / 3600).toFixed(1) + " h"; }
function fmtBytes(b) { return b >= 1048576 ? (b / 1048576).toFixed(1) + " MiB" : (b / 1024).toFixed(0) + " KiB"; }

function renderMatrix(s) {
  const best = new Map();  // "src\u0000dst" -> cell, preferring UDP echo
  for (const c of s.cells) {
    const k = c.src + "\u0000" + c.dst, old = best.get(k);
    if (!old || (protoRank[c.protocol] ?? 9) < (protoRank[old.protocol] ?? 9)) best.set(k, c);
  }
  const rows = [...new Set(s.cells.map(c => c.src).concat(s.agents.map(a => a.pop)))].sort();
  const cols = [...new Set(s.cells.map(c => c.dst).concat(rows))].sort();
  const body = document.querySelector("#matrix tbody");
  body.replaceChildren();
  const head = el("tr");
  head.appendChild(el("th", { class: "corner" }, "from \\ to"));
  for (const d of cols) head.appendChild(el("th", { class: "dst" }, d));
  body.appendChild(head);
  for (const src of rows) {
    const tr = el("tr");
    tr.appendChild(el("th", { class: "src" }, src));
    for (const dst of cols) {
      const c = best.get(src + "\u0000" + dst);
      if (!c) {
        const td = el("td", { class: src === dst ? "cell self" : "cell none" }, src === dst ? "\u2014" : "\u00b7");
        tr.appendChild(td);
        continue;
      }
      const ms = quantile === "p50" ? c.p50_ms : c.p99_ms;
      const td = el("td", { class: "cell" + (c.loss > 0 ? " loss" : ""), "data-src": src, "data-dst": dst,
        "data-p50": c.p50_ms.toFixed(3), "data-p99": c.p99_ms.toFixed(3), "data-loss": c.loss.toFixed(4),
        "data-protocol": c.protocol, "data-value": ms.toFixed(3),
        title: src + " \u2192 " + dst + " (" + c.protocol + ", " + c.agent + ")\np50 " + fmtMs(c.p50_ms) + " ms, p99 " +
               fmtMs(c.p99_ms) + " ms\nloss " + (100 * c.loss).toFixed(2) + " %, " + c.sent + " sent\n" + fmtAge(c.age_s) + " ago" });
      td.style.background = colour(ms);
      td.textContent = fmtMs(ms);
      td.appendChild(el("small", {}, c.loss > 0 ? "loss " + (100 * c.loss).toFixed(1) + "%" : quantile));
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function sparkline(points) {
  const w = 150, h = 36, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const bg = document.createElementNS(ns, "rect");
  bg.setAttribute("width", w); bg.setAttribute("height", h); bg.setAttribute("fill", "#f3f5f9");
  svg.appendChild(bg);
  if (points.length > 1) {
    const t0 = points[0][0], t1 = points[points.length - 1][0], span = Math.max(1, t1 - t0);
    const d = points.map((p, i) => (i ? "L" : "M") + ((p[0] - t0) / span * (w - 2) + 1).toFixed(1) + "," +
                                    ((1 - Math.min(1, Math.max(0, p[1]))) * (h - 6) + 3).toFixed(1)).join(" ");
    const area = document.createElementNS(ns, "path");  // filled below the line: 100 % stays visible
    area.setAttribute("d", d + " L" + (w - 1) + "," + h + " L1," + h + " Z");
    area.setAttribute("fill", "#2e6fd8"); area.setAttribute("fill-opacity", "0.18");
    svg.appendChild(area);
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d); path.setAttribute("fill", "none"); path.setAttribute("stroke", "#2e6fd8");
    path.setAttribute("stroke-width", "1.5");
    svg.appendChild(path);
  }
  return svg;
}

function renderLoad(s) {
  const box = document.getElementById("pops");
  box.replaceChildren();
  for (const l of s.load) {
    const card = el("div", { class: "pop", "data-pop": l.pop, "data-agent": l.agent });
    card.appendChild(el("div", { class: "name" }, l.pop + "  "));
    card.firstChild.appendChild(el("span", { class: "figs" }, l.agent));
    const figs = [];
    if (l.cpu_busy !== null) figs.push("CPU " + (100 * l.cpu_busy).toFixed(1) + "%");
    if (l.load1 !== null) figs.push("load " + l.load1.toFixed(2));
    if (l.mem_used !== null) figs.push("mem " + (100 * l.mem_used).toFixed(0) + "%");
    card.appendChild(el("div", { class: "figs" }, figs.join(" \u00b7 ")));
    card.appendChild(sparkline(l.history));
    box.appendChild(card);
  }
}

function renderAgents(s) {
  const body = document.querySelector("#agents tbody");
  body.replaceChildren();
  for (const a of s.agents) {
    const tr = el("tr", { "data-agent": a.agent, "data-last-seen-age": a.age_s.toFixed(1) });
    tr.appendChild(el("td", {}, a.agent));
    tr.appendChild(el("td", {}, a.region));
    tr.appendChild(el("td", {}, a.pop));
    tr.appendChild(el("td", { class: a.age_s > 60 ? "num stale" : "num" }, fmtAge(a.age_s) + " ago"));
    tr.appendChild(el("td", { class: "num" }, String(a.seq)));
    tr.appendChild(el("td", { class: "num" }, a.rss_bytes === null ? "" : fmtBytes(a.rss_bytes)));
    tr.appendChild(el("td", { class: "num" }, a.spool_batches === null ? "" : String(a.spool_batches)));
    tr.appendChild(el("td", { class: "num" }, a.reconnects === null ? "" : String(a.reconnects)));
    body.appendChild(tr);
  }
}

function render() {
  if (!last) return;
  renderMatrix(last);
  renderLoad(last);
  renderAgents(last);
  document.getElementById("n-agents").textContent = last.agents.length;
  document.getElementById("n-conn").textContent = last.collector.connections_open;
  document.getElementById("n-stored").textContent = last.collector.batches_stored;
  document.getElementById("updated").textContent = "updated " + new Date(last.now_ms).toLocaleTimeString();
}

async function refresh() {
  try {
    const r = await fetch("api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    last = await r.json();
    render();
  } catch (e) {
    const u = document.getElementById("updated");
    u.textContent = "refresh failed: " + e.message;
    u.className = "stat err";
  }
}

for (const q of ["p50", "p99"]) {
  document.getElementById("q-" + q).addEventListener("click", () => {
    quantile = q;
    document.getElementById("q-p50").classList.toggle("on", q === "p50");
    document.getElementById("q-p99").classList.toggle("on", q === "p99");
    render();
  });
}
document.getElementById("legend-bar").style.background =
  "linear-gradient(to right, " + [1, 3, 10, 30, 100, 300].map(colour).join(", ") + ")";
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
)html";

void append_number(std::string& out, double v) {
  if (!std::isfinite(v)) {  // JSON has no spelling for NaN or infinities
    out += "null";
    return;
  }
  char buffer[32];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, v);  // shortest round trip
  out.append(buffer, ec == std::errc() ? end : buffer);
}

void append_optional(std::string& out, const std::optional<double>& v) {
  if (v) {
    append_number(out, *v);
  } else {
    out += "null";
  }
}

}  // namespace

std::string_view status_page_html() noexcept { return kPage; }

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\u%04x", static_cast<unsigned>(c));
      out += buffer;
    } else if (c == '<') {
      out += "\\u003c";  // harmless in JSON, and never closes a script element if ever inlined
    } else {
      out += ch;
    }
  }
  out += '"';
  return out;
}

std::string render_status_json(const LiveSnapshot& view, const IngestCounters& counters,
                               std::int64_t now_ns) {
  std::string out;
  out.reserve(256 + view.latency.size() * 200 + view.load.size() * 1200);
  out += "{\"now_ms\":";
  append_number(out, static_cast<double>(now_ns / 1'000'000));
  out += ",\"cells\":[";
  bool first = true;
  for (const LiveLatency& l : view.latency) {
    out += first ? "{" : ",{";
    first = false;
    out += "\"src\":" + json_string(l.pop) + ",\"dst\":" + json_string(l.target) +
           ",\"agent\":" + json_string(l.agent_id) + ",\"region\":" + json_string(l.region) +
           ",\"protocol\":" + json_string(l.protocol) + ",\"p50_ms\":";
    append_number(out, static_cast<double>(l.p50_ns) / 1e6);
    out += ",\"p99_ms\":";
    append_number(out, static_cast<double>(l.p99_ns) / 1e6);
    out += ",\"jitter_ms\":";
    append_number(out, l.jitter_mean_ns / 1e6);
    out += ",\"loss\":";
    append_number(out, l.loss_ratio);
    out += ",\"sent\":" + std::to_string(l.sent) + ",\"lost\":" + std::to_string(l.lost) + ",\"age_s\":";
    append_number(out, static_cast<double>(now_ns - l.interval_end_ns) / 1e9);
    out += '}';
  }
  out += "],\"load\":[";
  first = true;
  for (const LiveLoad& l : view.load) {
    out += first ? "{" : ",{";
    first = false;
    out += "\"pop\":" + json_string(l.pop) + ",\"agent\":" + json_string(l.agent_id) + ",\"cpu_busy\":";
    append_optional(out, l.cpu_busy);
    out += ",\"load1\":";
    append_optional(out, l.load1);
    out += ",\"mem_used\":";
    if (l.mem_total && l.mem_available && *l.mem_total > 0) {
      append_number(out, 1.0 - static_cast<double>(*l.mem_available) / static_cast<double>(*l.mem_total));
    } else {
      out += "null";
    }
    out += ",\"history\":[";
    for (std::size_t i = 0; i < l.history.size(); ++i) {
      out += i ? ",[" : "[";
      append_number(out, static_cast<double>(l.history[i].time_ns / 1'000'000));
      out += ',';
      append_number(out, l.history[i].cpu_busy);
      out += ']';
    }
    out += "]}";
  }
  out += "],\"agents\":[";
  first = true;
  for (const LiveAgent& a : view.agents) {
    out += first ? "{" : ",{";
    first = false;
    out += "\"agent\":" + json_string(a.agent_id) + ",\"region\":" + json_string(a.region) +
           ",\"pop\":" + json_string(a.pop) + ",\"seq\":" + std::to_string(a.seq) + ",\"age_s\":";
    append_number(out, static_cast<double>(now_ns - a.last_seen_ns) / 1e9);
    const auto self = [&](const char* key, std::optional<std::uint64_t> v) {
      out += ",\"";
      out += key;
      out += "\":";
      out += v ? std::to_string(*v) : std::string("null");
    };
    self("rss_bytes", a.self ? std::optional(a.self->rss_bytes) : std::nullopt);
    self("spool_batches", a.self ? std::optional(a.self->spool_records) : std::nullopt);
    self("reconnects", a.self ? std::optional(a.self->reconnects) : std::nullopt);
    out += '}';
  }
  out += "],\"collector\":{\"connections_open\":" + std::to_string(counters.connections_open) +
         ",\"batches_stored\":" + std::to_string(counters.batches_stored) + "}}";
  return out;
}

}  // namespace vantage::collector::http
