// The collector's HTTP side without sockets: Prometheus text formatting (escaping, histograms),
// the live view (newest wins, expiry, bounded history), and /metrics and /api/status rendered
// from them.
#include <doctest/doctest.h>

#include <flatbuffers/flatbuffers.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "collector/http/http_server.hpp"
#include "collector/http/metrics.hpp"
#include "collector/http/prometheus_text.hpp"
#include "collector/http/status_page.hpp"
#include "collector/live_view.hpp"
#include "platform/utf8_text.hpp"
#include "tests/collector/one_way_batches.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace {

using namespace vantage;
using collector::LiveView;
using collector::store::IncomingBatch;

constexpr std::int64_t kT0 = 1'700'000'000'000'000'000;
constexpr std::int64_t kSecond = 1'000'000'000;

struct Built {
  std::vector<std::uint8_t> bytes;
  const wire::Batch* batch() const { return wire::GetFrame(bytes.data())->message_as_Batch(); }
};

Built batch(const std::string& agent, const std::string& pop, std::uint64_t seq, std::int64_t p50,
            const std::vector<std::string>& targets, double idle = 0.75, bool with_self = true) {
  flatbuffers::FlatBufferBuilder fbb;
  const std::int64_t start = kT0 + static_cast<std::int64_t>(seq) * kSecond;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (const auto& t : targets) {
    latency.push_back(wire::CreateLatencySummaryDirect(fbb, t.c_str(), wire::Protocol::UdpEcho, 10, 8, 2, 0,
                                                       0, 0, 0, 1, p50 / 2, p50 * 3, static_cast<double>(p50),
                                                       1000.0, p50, p50 + 1, p50 + 2, p50 + 3, 250.0, 900));
  }
  std::vector<wire::CpuUsage> cpus{{-1, 0.125f, 0.125f, 0.0f, 0.0f, 0.0f, 0.0f, static_cast<float>(idle), 0}};
  wire::MemoryUsage mem(8ull << 30, 2ull << 30, 0, 0, 0);
  wire::Pressure psi(-1.0f, -1.0f, -1.0f, -1.0f, -1.0f);
  wire::LoadAverage la(0.5f, 0.25f, 0.125f);
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSampleDirect(fbb, start + kSecond / 2, "amd64", &cpus, &mem, &psi, &la)};
  flatbuffers::Offset<wire::AgentSelf> self;
  if (with_self)
    self = wire::CreateAgentSelf(fbb, kT0, 1, 5u << 20, 2'000'000'000, 500'000'000, 3, 0, 1, 100, 2, 0, 0, 0, 4, 5, 6);
  const auto b = wire::CreateBatchDirect(fbb, agent.c_str(), seq, start, start + kSecond, "eu-central",
                                         pop.c_str(), &latency, &load, nullptr, 0, self);
  return Built{test::finish_batch(fbb, b)};
}

void record(LiveView& view, const Built& b, const std::string& agent, const std::string& pop,
            std::int64_t received_ns) {
  IncomingBatch in;
  in.batch = b.batch();
  in.agent_id = agent;
  in.region = "eu-central";
  in.pop = pop;
  in.received_ns = received_ns;
  view.record(in);
}

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("label values escape backslash, quote and line feed and HELP escapes backslash and line feed") {
  using collector::http::escape_help;
  using collector::http::escape_label_value;
  CHECK(escape_label_value(R"(a\b"c)"
                           "\n"
                           "d") == R"(a\\b\"c\nd)");
  CHECK(escape_label_value("plain-name_1.2:3") == "plain-name_1.2:3");
  CHECK(escape_help("one \\ two\nthree \"q\"") == "one \\\\ two\\nthree \"q\"");

  collector::http::PrometheusText out;
  out.family("x_total", collector::http::PrometheusText::Type::kCounter, "An x.\nSecond line.");
  out.sample("x_total", {{"target", "h\"1\"\\"}, {"pop", "fra\n1"}}, 3);
  CHECK(out.text() ==
        "# HELP x_total An x.\\nSecond line.\n# TYPE x_total counter\n"
        "x_total{target=\"h\\\"1\\\"\\\\\",pop=\"fra\\n1\"} 3\n");
}

TEST_CASE("sample values: integers plain, fractions round-trip, NaN and infinities spelled") {
  using collector::http::format_value;
  CHECK(format_value(0) == "0");
  CHECK(format_value(18446744073.0) == "18446744073");
  CHECK(format_value(0.0005) == "0.0005");
  CHECK(format_value(0.1 + 0.2) == "0.30000000000000004");
  CHECK(format_value(-2.5) == "-2.5");
  CHECK(format_value(1e-300).find("e-300") != std::string::npos);  // too long for fixed
  CHECK(format_value(std::numeric_limits<double>::quiet_NaN()) == "NaN");
  CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
}

TEST_CASE("a histogram is written with cumulative buckets, +Inf, _sum and _count") {
  collector::http::PrometheusText out;
  const double bounds[] = {0.001, 0.01, 0.1};
  const std::uint64_t per_bucket[] = {2, 0, 5, 1};
  out.family("lat_seconds", collector::http::PrometheusText::Type::kHistogram, "Latency.");
  out.histogram("lat_seconds", {{"sink", "sqlite"}}, bounds, per_bucket, 0.75);
  CHECK(out.text() ==
        "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
        "lat_seconds_bucket{sink=\"sqlite\",le=\"0.001\"} 2\n"
        "lat_seconds_bucket{sink=\"sqlite\",le=\"0.01\"} 2\n"
        "lat_seconds_bucket{sink=\"sqlite\",le=\"0.1\"} 7\n"
        "lat_seconds_bucket{sink=\"sqlite\",le=\"+Inf\"} 8\n"
        "lat_seconds_sum{sink=\"sqlite\"} 0.75\n"
        "lat_seconds_count{sink=\"sqlite\"} 8\n");
}

TEST_CASE("the live view keeps the newest summary per key and ignores a late resend") {
  LiveView view;
  const auto b2 = batch("fra1-a", "fra1", 2, 8'000'000, {"ams1", "sin1"});
  const auto b1 = batch("fra1-a", "fra1", 1, 99'000'000, {"ams1"});
  record(view, b2, "fra1-a", "fra1", kT0 + 3 * kSecond);
  record(view, b1, "fra1-a", "fra1", kT0 + 4 * kSecond);  // older interval, arrived later
  const auto s = view.snapshot(kT0 + 5 * kSecond);
  REQUIRE(s.latency.size() == 2);
  CHECK(s.latency[0].target == "ams1");
  CHECK(s.latency[0].p50_ns == 8'000'000);
  CHECK(s.latency[0].loss_ratio == doctest::Approx(0.2));
  CHECK(s.latency[0].protocol == "udp_echo");
  REQUIRE(s.agents.size() == 1);
  CHECK(s.agents[0].seq == 2);
  CHECK(s.agents[0].last_seen_ns == kT0 + 4 * kSecond);
  REQUIRE(s.agents[0].self);
  CHECK(s.agents[0].self->rss_bytes == 5u << 20);
  REQUIRE(s.load.size() == 1);
  CHECK(*s.load[0].cpu_busy == doctest::Approx(0.25));
  CHECK(!s.load[0].psi_cpu_some);  // negative on the wire: no PSI
  CHECK(*s.load[0].load1 == doctest::Approx(0.5));
}

TEST_CASE("the live view follows a reinstalled agent's new incarnation although its seqs start again at 1") {
  LiveView view;
  const auto at = [](std::uint64_t seq, std::int64_t start) {
    flatbuffers::FlatBufferBuilder fbb;
    return Built{test::finish_batch(fbb, wire::CreateBatchDirect(fbb, "fra1-a", seq, start, start + kSecond,
                                                                 "eu-central", "fra1"))};
  };
  const auto in = [&view](const Built& b, std::uint8_t incarnation, std::int64_t received_ns) {
    IncomingBatch i;
    i.batch = b.batch();
    i.agent_id = "fra1-a";
    i.region = "eu-central";
    i.pop = "fra1";
    i.incarnation[0] = incarnation;
    i.received_ns = received_ns;
    view.record(i);
  };
  const auto old_spool = at(500, kT0);
  const auto reinstalled = at(1, kT0 + 60 * kSecond);
  const auto late_old = at(499, kT0 - kSecond);
  in(old_spool, 0xa0, kT0 + kSecond);
  in(reinstalled, 0xb0, kT0 + 61 * kSecond);
  in(late_old, 0xa0, kT0 + 62 * kSecond);  // a late resend from the old spool changes nothing
  const auto s = view.snapshot(kT0 + 63 * kSecond);
  REQUIRE(s.agents.size() == 1);
  CHECK(s.agents[0].incarnation == "b0000000000000000000000000000000");
  CHECK(s.agents[0].seq == 1);
  CHECK(contains(collector::http::render_status_json(s, {}, kT0 + 63 * kSecond),
                 "\"incarnation\":\"b0000000000000000000000000000000\""));
}

TEST_CASE("the live view forgets entries not updated within forget_after and bounds load history") {
  LiveView view({.forget_after = std::chrono::seconds(60), .load_history = 3});
  for (std::uint64_t seq = 1; seq <= 5; ++seq) {
    const auto b = batch("fra1-a", "fra1", seq, 1'000'000, {"ams1"}, 0.5 + 0.1 * static_cast<double>(seq));
    record(view, b, "fra1-a", "fra1", kT0 + static_cast<std::int64_t>(seq) * kSecond);
  }
  const auto b = batch("ams1-a", "ams1", 1, 2'000'000, {"fra1"});
  record(view, b, "ams1-a", "ams1", kT0 + 50 * kSecond);
  auto s = view.snapshot(kT0 + 50 * kSecond);
  REQUIRE(s.load.size() == 2);
  REQUIRE(s.load[1].pop == "fra1");
  CHECK(s.load[1].history.size() == 3);
  CHECK(s.load[1].history.back().cpu_busy == doctest::Approx(1.0 - 1.0).epsilon(0.01));
  CHECK(s.load[1].history.front().cpu_busy == doctest::Approx(0.2).epsilon(0.01));
  s = view.snapshot(kT0 + 100 * kSecond);  // fra1 last updated at 5 s: forgotten; ams1 at 50 s: kept
  REQUIRE(s.agents.size() == 1);
  CHECK(s.agents[0].agent_id == "ams1-a");
  CHECK(s.latency.size() == 1);
  CHECK(s.load.size() == 1);
  CHECK(view.snapshot(kT0 + 200 * kSecond).agents.empty());
  CHECK(view.size() == 0);
}

TEST_CASE("/metrics holds every family with HELP and TYPE, every reject reason, and the sink histogram") {
  LiveView view;
  const auto b = batch("fra1-a", "fra1", 1, 8'000'000, {"ams1"});
  record(view, b, "fra1-a", "fra1", kT0 + 2 * kSecond);
  collector::IngestCounters c;
  c.batches_stored = 7;
  c.rejects[static_cast<std::size_t>(collector::Reject::kRegion)] = 2;
  c.sessions_open = 9'000;
  c.handshakes_in_progress = 12;
  c.resumed_handshakes = 8'500;
  c.store_queue_bytes = 4096;
  c.read_pauses = 3;
  c.sink_latency_buckets[0] = 3;
  c.sink_latency_buckets[collector::kSinkLatencyBuckets - 1] = 1;
  c.sink_latency_sum_s = 3.5;
  const std::string text =
      collector::http::render_metrics(view.snapshot(kT0 + 3 * kSecond), c, "sqlite", kT0 + 3 * kSecond);
  const std::string labels =
      R"(region="eu-central",pop="fra1",agent="fra1-a",target="ams1",protocol="udp_echo")";
  CHECK(contains(text, "# TYPE vantage_rtt_seconds summary\n"));
  CHECK(contains(text, "vantage_rtt_seconds{" + labels + ",quantile=\"0.5\"} 0.008\n"));
  CHECK(contains(text, "vantage_rtt_seconds{" + labels + ",quantile=\"0.99\"} 0.008000002\n"));
  CHECK(contains(text, "vantage_loss_ratio{" + labels + "} 0.2\n"));
  CHECK(contains(text, "vantage_probes_sent{" + labels + "} 10\n"));
  CHECK(contains(text, "vantage_latency_age_seconds{" + labels + "} 1\n"));
  CHECK(contains(text, "# TYPE vantage_target_unresolved gauge\n"));
  CHECK(contains(text, "vantage_target_unresolved{" + labels + "} 0\n"));  // a target that resolves
  CHECK(contains(text,
                 "vantage_host_cpu_busy_ratio{region=\"eu-central\",pop=\"fra1\",agent=\"fra1-a\"} 0.25\n"));
  CHECK(!contains(text, "vantage_host_pressure_cpu_some_ratio{"));
  CHECK(contains(text,
                 "vantage_agent_cpu_seconds_total{region=\"eu-central\",pop=\"fra1\",agent=\"fra1-a\",mode="
                 "\"user\"} 2\n"));
  CHECK(contains(text, "# HELP vantage_agent_spool_errors_total Spool writes, acks and syncs that failed on the "
                       "agent (I/O error, disk full).\n# TYPE vantage_agent_spool_errors_total counter\n"
                       "vantage_agent_spool_errors_total{region=\"eu-central\",pop=\"fra1\",agent=\"fra1-a\"} 4\n"));
  CHECK(contains(text, "# TYPE vantage_agent_spool_lost_total counter\n"
                       "vantage_agent_spool_lost_total{region=\"eu-central\",pop=\"fra1\",agent=\"fra1-a\"} 5\n"));
  CHECK(contains(text, "vantage_agent_spool_sync_stalls_total{region=\"eu-central\",pop=\"fra1\",agent=\"fra1-a\"} 6\n"));
  CHECK(contains(text, "vantage_collector_batches_stored_total 7\n"));
  CHECK(contains(text, "vantage_collector_sessions_open 9000\n"));
  CHECK(contains(text, "vantage_collector_handshakes_in_progress 12\n"));
  CHECK(contains(text, "vantage_collector_handshakes_resumed_total 8500\n"));
  CHECK(contains(text, "vantage_collector_store_queue_bytes 4096\n"));
  CHECK(contains(text, "vantage_collector_read_pauses_total 3\n"));
  for (const char* reason : {"connection_limit", "handshake", "timeout", "no_identity", "identity", "region",
                             "protocol", "frame", "store", "handshake_limit", "source_limit", "evicted",
                             "slow_reader", "fd_limit"}) {
    CHECK(contains(text, std::string("vantage_collector_rejects_total{reason=\"") + reason + "\"} " +
                             (std::string(reason) == "region" ? "2" : "0") + "\n"));
  }
  CHECK(contains(text, "# TYPE vantage_collector_sink_latency_seconds histogram\n"));
  CHECK(contains(text, "vantage_collector_sink_latency_seconds_bucket{sink=\"sqlite\",le=\"0.0005\"} 3\n"));
  CHECK(contains(text, "vantage_collector_sink_latency_seconds_bucket{sink=\"sqlite\",le=\"2.5\"} 3\n"));
  CHECK(contains(text, "vantage_collector_sink_latency_seconds_bucket{sink=\"sqlite\",le=\"+Inf\"} 4\n"));
  CHECK(contains(text, "vantage_collector_sink_latency_seconds_count{sink=\"sqlite\"} 4\n"));
  // Every sample line belongs to a family announced before it, and every family has HELP and TYPE.
  std::string family;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("# HELP ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
      continue;
    }
    if (line.rfind("# TYPE " + family + " ", 0) == 0) continue;
    INFO(line);
    const std::string name = line.substr(0, line.find_first_of("{ "));
    CHECK((name == family || name == family + "_bucket" || name == family + "_sum" ||
           name == family + "_count"));
  }
}

TEST_CASE("/api/status is JSON with a cell per (PoP, target) and escapes strings") {
  LiveView view;
  const auto b = batch("fra1-a", "fra1", 1, 8'000'000, {"ams1", "s\"in<1"});
  record(view, b, "fra1-a", "fra1", kT0 + 2 * kSecond);
  const std::string json =
      collector::http::render_status_json(view.snapshot(kT0 + 3 * kSecond), {}, kT0 + 3 * kSecond);
  CHECK(contains(json, R"("src":"fra1","dst":"ams1")"));
  CHECK(contains(json, R"("dst":"s\"in\u003c1")"));
  CHECK(contains(json, R"("p50_ms":8,)"));
  CHECK(contains(json, R"("now_ms":1700000003000,)"));
  // Every self-metric under "self", by its wire name.
  CHECK(contains(json, R"("rss_bytes":5242880,"spool_batches":1,"reconnects":2,"self":{"process_start_ns":)"));
  CHECK(contains(json, R"("spool_errors":4,"spool_lost":5,"spool_sync_stalls":6})"));
  CHECK(collector::http::json_string("a\nb\\") == R"("a\u000ab\\")");
  CHECK(collector::http::status_page_html().find("data-src") != std::string_view::npos);
  // Nothing external: no linked scripts, styles or fonts.
  CHECK(collector::http::status_page_html().find("<script src") == std::string_view::npos);
  CHECK(collector::http::status_page_html().find("<link") == std::string_view::npos);
  CHECK(collector::http::status_page_html().find("@import") == std::string_view::npos);
  // Names reach the DOM as text only (textContent, setAttribute), never parsed as markup.
  for (const char* sink : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("}) {
    CAPTURE(sink);
    CHECK(collector::http::status_page_html().find(sink) == std::string_view::npos);
  }
}

TEST_CASE("the mesh: its families and per-agent list versions in /metrics (promtool clean), and in /api/status") {
  LiveView view;
  const auto b = batch("fra1-a", "fra1", 1, 8'000'000, {"ams1"});
  record(view, b, "fra1-a", "fra1", kT0 + 2 * kSecond);
  collector::IngestCounters c;
  const std::string plain =
      collector::http::render_metrics(view.snapshot(kT0 + 3 * kSecond), c, "sqlite", kT0 + 3 * kSecond);
  CHECK_FALSE(contains(plain, "vantage_mesh_"));  // no mesh configured: no mesh families
  CHECK(contains(collector::http::render_status_json(view.snapshot(kT0 + 3 * kSecond), c, kT0 + 3 * kSecond),
                 R"("target_list_version":null,"target_list_planned_version":null,"target_list_stale":null})"));

  c.mesh.enabled = true;
  c.mesh.agents = 2;
  c.mesh.pops = 2;
  c.mesh.planned_targets = 2;
  c.mesh.lists_recomputed = 5;
  c.mesh.lists_sent = 4;
  c.mesh.lists_replaced = 1;
  c.mesh.agents_stale = 1;
  c.mesh.versions = {{"eu-central", "ams1", "ams1-a", 0, 0, 0, false, false},
                     {"eu-central", "fra1", "fra1-a", 1'733'000'000'123, 1'733'000'000'123, 1'733'000'000'100, true,
                      true}};
  const std::string text =
      collector::http::render_metrics(view.snapshot(kT0 + 3 * kSecond), c, "sqlite", kT0 + 3 * kSecond);
  const std::string fra = R"({region="eu-central",pop="fra1",agent="fra1-a"})";
  const std::string ams = R"({region="eu-central",pop="ams1",agent="ams1-a"})";
  CHECK(contains(text, "# TYPE vantage_mesh_agents gauge\nvantage_mesh_agents 2\n"));
  CHECK(contains(text, "vantage_mesh_lists_recomputed_total 5\n"));
  CHECK(contains(text, "vantage_mesh_lists_sent_total 4\n"));
  CHECK(contains(text, "vantage_mesh_lists_replaced_total 1\n"));
  CHECK(contains(text, "vantage_mesh_agents_stale 1\n"));
  CHECK(contains(text, "vantage_agent_target_list_version" + fra + " 1733000000100\n"));
  CHECK(contains(text, "vantage_agent_target_list_planned_version" + fra + " 1733000000123\n"));
  CHECK(contains(text, "vantage_agent_target_list_stale" + fra + " 1\n"));
  // An agent without the capability and outside the planner: its running version (0) only.
  CHECK(contains(text, "vantage_agent_target_list_version" + ams + " 0\n"));
  CHECK_FALSE(contains(text, "vantage_agent_target_list_planned_version" + ams));
  CHECK_FALSE(contains(text, "vantage_agent_target_list_stale" + ams));
  if (std::FILE* promtool = ::popen("promtool check metrics >/dev/null 2>&1", "w")) {
    std::fwrite(text.data(), 1, text.size(), promtool);
    const int status = ::pclose(promtool);
    // 127: no promtool here; anything else but 0 is a finding.
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 127)) CHECK(status == 0);
  }

  const std::string json =
      collector::http::render_status_json(view.snapshot(kT0 + 3 * kSecond), c, kT0 + 3 * kSecond);
  CHECK(contains(json, R"("target_list_version":1733000000100,"target_list_planned_version":1733000000123,"target_list_stale":true})"));
  CHECK(contains(json, R"("mesh":{"agents":2,"pops":2,"planned_targets":2,"lists_recomputed":5,"lists_sent":4,"agents_stale":1,"versions":[)"));
  CHECK(contains(json, R"({"agent":"fra1-a","region":"eu-central","pop":"fra1","running":1733000000100,"planned":1733000000123,"sent":1733000000123,"connected":true,"accepts_lists":true,"stale":true})"));
}

TEST_CASE("label values and HELP never carry invalid UTF-8 or control characters, whatever they are given") {
  using collector::http::escape_help;
  using collector::http::escape_label_value;
  const std::string fffd = "\xef\xbf\xbd";
  CHECK(escape_label_value("a\xff" "b") == "a" + fffd + "b");
  CHECK(escape_label_value("\xc0\xaf") == fffd + fffd);  // an overlong '/': each byte replaced
  CHECK(escape_label_value("x\xed\xa0\x80") == "x" + fffd + fffd + fffd);
  CHECK(escape_label_value("cr\rtab\tesc\x1b" "del\x7f" "c1\xc2\x85") ==
        "cr" + fffd + "tab" + fffd + "esc" + fffd + "del" + fffd + "c1" + fffd);
  // Valid text passes untouched: quotes escaped, the rest as is.
  CHECK(escape_label_value("\"q\" </script> \xe2\x80\x8f\xd7\xa9 \xf0\x9f\x9a\x80") ==
        "\\\"q\\\" </script> \xe2\x80\x8f\xd7\xa9 \xf0\x9f\x9a\x80");
  CHECK(escape_help("bad \xff\n") == "bad " + fffd + "\\n");
}

TEST_CASE("/metrics with hostile names from the live view stays one sample per line, valid UTF-8") {
  LiveView view;
  const auto b = batch("fra1-a", "fra1", 1, 8'000'000, {"ok", "new\nline", "bad\xff", "q\"</script>"});
  record(view, b, "fra\n1-a", "fra1\r", kT0 + 2 * kSecond);
  const std::string text =
      collector::http::render_metrics(view.snapshot(kT0 + 3 * kSecond), {}, "sqlite", kT0 + 3 * kSecond);
  CHECK(vantage::platform::check_text(text, text.size()).fault != vantage::platform::TextFault::kInvalidUtf8);
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = text.find('\n', start);
    REQUIRE(end != std::string::npos);
    const std::string line = text.substr(start, end - start);
    CAPTURE(line);
    CHECK(vantage::platform::check_text(line, line.size()));  // no control character in a line
    CHECK((line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.starts_with("vantage_")));
    start = end + 1;
  }
  CHECK(contains(text, "target=\"new\\nline\""));
  CHECK(contains(text, "target=\"q\\\"</script>\""));
}

namespace {

using namespace std::chrono_literals;

// A plain TCP client for the HTTP server's limits.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Sends what the server takes; false once it closed or reset the connection.
  bool send_all(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // Everything until the server closes (or `limit` passes): {bytes, closed}.
  std::pair<std::string, bool> read_until_closed(std::chrono::milliseconds limit = 20s) {
    std::string out;
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buffer[4096];
      const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return {out, true};
      out.append(buffer, static_cast<std::size_t>(n));
    }
    return {out, false};
  }

 private:
  int fd_ = -1;
};

struct Served {
  explicit Served(collector::http::HttpLimits limits) {
    collector::http::HttpConfig config;
    config.listen.emplace_back(asio::ip::make_address("127.0.0.1"), 0);
    config.limits = limits;
    server = std::make_unique<collector::http::HttpServer>(config, view, ingest);
    REQUIRE(server->start());
    port = server->local_endpoints().at(0).port();
  }
  LiveView view;
  collector::IngestServer ingest{collector::IngestConfig{}};
  std::unique_ptr<collector::http::HttpServer> server;
  std::uint16_t port = 0;
};

using test::eventually;

}  // namespace

TEST_CASE("http server: GET and HEAD are served, every other method is 405 and its body never read") {
  Served s({});
  {
    RawClient c(s.port);
    REQUIRE(c.send_all("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    CHECK(text.starts_with("HTTP/1.1 200"));
    CHECK(contains(text, "vantage_collector_http_refused_total{limit=\"method\"} 0"));
  }
  {
    RawClient c(s.port);
    REQUIRE(c.send_all("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    CHECK(c.read_until_closed().first.starts_with("HTTP/1.1 200"));
  }
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"}) {
    CAPTURE(method);
    RawClient c(s.port);
    // A body announced at 1 GiB, of which only the start is sent: the answer comes at once.
    REQUIRE(c.send_all(std::string(method) + " /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n" +
                       std::string(4096, 'z')));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    CHECK(text.starts_with("HTTP/1.1 405"));
    CHECK(contains(text, "Allow: GET, HEAD"));
  }
  {
    // With Expect: 100-continue the refusal comes before the client sends any of its body.
    RawClient c(s.port);
    REQUIRE(c.send_all("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    CHECK(text.starts_with("HTTP/1.1 405"));
  }
  {
    // A method httplib does not know is a bad request; the connection ends all the same.
    RawClient c(s.port);
    REQUIRE(c.send_all("BREW / HTTP/1.1\r\nHost: x\r\n\r\n"));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    CHECK(text.starts_with("HTTP/1.1 400"));
  }
  CHECK(s.server->counters().refused_methods == 7);
}

TEST_CASE("http server: a connection past its byte budget is closed, however the bytes come") {
  collector::http::HttpLimits limits;
  limits.connection_bytes = 64 << 10;
  Served s(limits);
  {
    // A request line that never ends: httplib alone would buffer all of it.
    RawClient c(s.port);
    bool sending = c.send_all("GET /");
    for (int i = 0; i < 64 && sending; ++i) sending = c.send_all(std::string(16 << 10, 'a'));
    CHECK(c.read_until_closed().second);
  }
  {
    // Keep-alive requests with padding headers: the budget spans the connection.
    RawClient c(s.port);
    // 14 KB each: the fifth passes 64 KiB, well before keep_alive_max_requests ends the connection.
    const std::string pad(7000, 'p');
    const std::string request = "GET /api/status HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + "\r\nX-Pad2: " + pad + "\r\n\r\n";
    for (int i = 0; i < 40 && c.send_all(request); ++i) {
    }
    CHECK(c.read_until_closed().second);
  }
  eventually([&] { return s.server->counters().oversized == 2; });
  const auto counters = s.server->counters();
  CAPTURE(counters.expired);
  CAPTURE(counters.requests);
  CHECK(counters.oversized == 2);
}

TEST_CASE("http server: a slow client is closed at the connection lifetime") {
  collector::http::HttpLimits limits;
  limits.connection_lifetime = 1500ms;
  Served s(limits);
  RawClient c(s.port);
  REQUIRE(c.send_all("GET / HTTP/1.1\r\n"));
  const auto start = std::chrono::steady_clock::now();
  bool open = true;
  // One header byte every 200 ms: within every read timeout, never done.
  while (open && std::chrono::steady_clock::now() - start < 30s) {
    open = c.send_all("X");
    std::this_thread::sleep_for(200ms);
    if (s.server->counters().expired > 0) break;
  }
  CHECK(eventually([&] { return s.server->counters().expired == 1; }));
  CHECK(c.read_until_closed().second);
}

TEST_CASE("http server: connections past max_connections are closed unread, the rest are served") {
  collector::http::HttpLimits limits;
  limits.threads = 1;
  limits.max_connections = 2;
  limits.keep_alive_timeout = 10s;  // the held connections stay held however slow this machine is
  Served s(limits);
  // The first holds the only worker (it waits for its request), the second waits in the queue,
  // the third and fourth are over the bound.
  RawClient first(s.port);
  REQUIRE(eventually([&] { return s.server->counters().shed_connections == 0; }));
  std::this_thread::sleep_for(200ms);
  RawClient second(s.port);
  std::this_thread::sleep_for(200ms);
  RawClient third(s.port);
  RawClient fourth(s.port);
  CHECK(third.read_until_closed(10s).second);
  CHECK(fourth.read_until_closed(10s).second);
  CHECK(s.server->counters().shed_connections == 2);
  // The held ones are still served.
  REQUIRE(first.send_all("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  CHECK(first.read_until_closed().first.starts_with("HTTP/1.1 200"));
  REQUIRE(second.send_all("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  CHECK(second.read_until_closed().first.starts_with("HTTP/1.1 200"));
}

TEST_CASE("http server: stop() does not wait for a client that holds its connection open") {
  collector::http::HttpLimits limits;
  limits.connection_lifetime = 600s;
  limits.read_timeout = 600s;
  limits.keep_alive_timeout = 600s;
  Served s(limits);
  RawClient idle(s.port);    // waits for a first request that never comes
  RawClient partial(s.port);  // half a request, then silence
  REQUIRE(partial.send_all("GET /metrics HTTP/1.1\r\nHost: x\r\n"));
  std::this_thread::sleep_for(300ms);
  const auto start = std::chrono::steady_clock::now();
  s.server->stop();
  // Far below the 600 s either connection could otherwise hold a worker.
  CHECK(std::chrono::steady_clock::now() - start < 60s);
  CHECK(idle.read_until_closed(10s).second);
  CHECK(partial.read_until_closed(10s).second);
}

TEST_CASE("http server: a Range header is ignored, so many ranges cannot multiply a response") {
  Served s({});
  const auto page = [&](const std::string& extra) {
    RawClient c(s.port);
    REQUIRE(c.send_all("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + "\r\n"));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    return text;
  };
  const std::string plain = page("");
  REQUIRE(plain.starts_with("HTTP/1.1 200"));
  // ~3,000 ranges, each the whole body: httplib would answer ~3,000 copies of the page.
  std::string ranges = "Range: bytes=-";
  while (ranges.size() < 6000) ranges += ",-";
  const std::string ranged = page(ranges + "\r\n");
  CHECK(ranged.starts_with("HTTP/1.1 200"));
  CHECK_FALSE(contains(ranged, "multipart/byteranges"));
  const auto body_size = [](const std::string& response) { return response.size() - response.find("\r\n\r\n"); };
  CHECK(body_size(ranged) == body_size(plain));
  const std::string one = page("Range: bytes=0-9\r\n");
  CHECK(one.starts_with("HTTP/1.1 200"));
  CHECK(body_size(one) == body_size(plain));
}

TEST_CASE("http server: connections on descriptors above FD_SETSIZE are served") {
  // httplib with select() answers 500 to a socket numbered 1024 or more; a collector with a
  // thousand agents connected hands its HTTP connections such numbers.
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  if (limit.rlim_cur < 1200 && limit.rlim_max >= 1200) {
    limit.rlim_cur = 1200;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &limit) == 0);
  }
  if (limit.rlim_cur < 1200) {
    MESSAGE("skipped: the open-file limit is below 1200");
    return;
  }
  Served s({});
  std::vector<int> filler;
  for (int fd = ::dup(0); fd >= 0 && fd < 1100; fd = ::dup(0)) filler.push_back(fd);
  REQUIRE(filler.size() > 900);
  {
    RawClient c(s.port);  // the server's accepted socket is numbered above 1024 now
    REQUIRE(c.send_all("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    const auto [text, closed] = c.read_until_closed();
    CHECK(closed);
    CHECK(text.starts_with("HTTP/1.1 200"));
  }
  for (const int fd : filler) ::close(fd);
}

namespace {

Built one_way_built(std::uint64_t seq, test::OneWayBatchSpec spec = {}) {
  spec.seq = seq;
  spec.interval_start_ns = kT0 + static_cast<std::int64_t>(seq) * kSecond;
  spec.interval_end_ns = spec.interval_start_ns + kSecond;
  return Built{test::one_way_batch(spec)};
}

// promtool's verdict when it is installed (127: it is not, nothing to check).
void check_promtool(const std::string& text) {
  if (std::FILE* promtool = ::popen("promtool check metrics >/dev/null 2>&1", "w")) {
    std::fwrite(text.data(), 1, text.size(), promtool);
    const int status = ::pclose(promtool);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 127)) CHECK(status == 0);
  }
}

}  // namespace

TEST_CASE("/metrics: the agent's clock state and one-way delay per target, protocol stamp (promtool clean)") {
  LiveView view;
  record(view, one_way_built(1), "fra-1", "fra1", kT0 + 2 * kSecond);
  // An older agent beside it: no clock, no one-way families of its own.
  record(view, batch("ams1-a", "ams1", 1, 8'000'000, {"fra1"}), "ams1-a", "ams1", kT0 + 2 * kSecond);
  const std::string text =
      collector::http::render_metrics(view.snapshot(kT0 + 3 * kSecond), {}, "sqlite", kT0 + 3 * kSecond);
  const std::string agent = R"(region="eu-central",pop="fra1",agent="fra-1")";
  CHECK(contains(text, "# TYPE vantage_agent_clock_synchronised gauge\n"));
  CHECK(contains(text, "vantage_agent_clock_synchronised{" + agent + "} 1\n"));
  CHECK(contains(text, "vantage_agent_clock_error_seconds{" + agent + ",kind=\"estimated\"} 0.00004\n"));
  CHECK(contains(text, "vantage_agent_clock_error_seconds{" + agent + ",kind=\"maximum\"} 0.00025\n"));
  CHECK(contains(text, "vantage_agent_clock_source_info{" + agent + ",source=\"chrony\"} 1\n"));
  CHECK_FALSE(contains(text, "vantage_agent_clock_synchronised{region=\"eu-central\",pop=\"ams1\""));
  CHECK_FALSE(contains(text, "vantage_agent_clock_source_info{region=\"eu-central\",pop=\"ams1\""));

  const std::string stamp = agent + R"(,target="router1:862",protocol="stamp")";
  CHECK(contains(text, "vantage_rtt_seconds{" + stamp + ",quantile=\"0.5\"} 0.035\n"));
  CHECK(contains(text, "# TYPE vantage_one_way_delay_seconds summary\n"));
  CHECK(contains(text, "vantage_one_way_delay_seconds{" + stamp + ",direction=\"forward\",quantile=\"0.5\"} 0.03\n"));
  CHECK(contains(text, "vantage_one_way_delay_seconds{" + stamp + ",direction=\"forward\",quantile=\"0.99\"} 0.0315\n"));
  CHECK(contains(text, "vantage_one_way_delay_seconds{" + stamp + ",direction=\"backward\",quantile=\"0.5\"} 0.005\n"));
  CHECK(contains(text, "vantage_one_way_delay_seconds{" + stamp + ",direction=\"backward\",quantile=\"0.99\"} 0.00625\n"));
  CHECK(contains(text, "vantage_one_way_error_bound_seconds{" + stamp + "} 0.0001\n"));
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"reported\"} 1\n"));
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"unsynchronised\"} 0\n"));
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"bound_too_large\"} 0\n"));
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"not_measured\"} 0\n"));

  // Unsynchronised: the status and its bound, no delays.
  const std::string udp = agent + R"(,target="ams1:7000",protocol="udp_echo")";
  CHECK(contains(text, "vantage_one_way_status{" + udp + ",status=\"unsynchronised\"} 1\n"));
  CHECK(contains(text, "vantage_one_way_error_bound_seconds{" + udp + "} 0.009\n"));
  CHECK_FALSE(contains(text, "vantage_one_way_delay_seconds{" + udp));
  // No one_way in the summary (TCP here, and the older agent's): no one-way series at all.
  for (const std::string& none : {agent + R"(,target="ams1:443")", std::string(R"(agent="ams1-a")")}) {
    CAPTURE(none);
    CHECK_FALSE(contains(text, "vantage_one_way_status{" + none));
    CHECK_FALSE(contains(text, "vantage_one_way_error_bound_seconds{" + none));
  }
  check_promtool(text);
}

TEST_CASE("/metrics: a later batch without a clock or one-way figures clears them, a status change moves the 1") {
  LiveView view;
  record(view, one_way_built(1), "fra-1", "fra1", kT0 + 2 * kSecond);
  test::OneWayBatchSpec spec;
  spec.stamp_status = wire::OneWayStatus::BoundTooLarge;
  spec.with_clock = false;
  record(view, one_way_built(2, spec), "fra-1", "fra1", kT0 + 3 * kSecond);
  const std::string text =
      collector::http::render_metrics(view.snapshot(kT0 + 4 * kSecond), {}, "sqlite", kT0 + 4 * kSecond);
  const std::string stamp = R"(region="eu-central",pop="fra1",agent="fra-1",target="router1:862",protocol="stamp")";
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"reported\"} 0\n"));
  CHECK(contains(text, "vantage_one_way_status{" + stamp + ",status=\"bound_too_large\"} 1\n"));
  CHECK_FALSE(contains(text, "vantage_one_way_delay_seconds{" + stamp));
  CHECK_FALSE(contains(text, "vantage_agent_clock_synchronised{"));
  check_promtool(text);
}

TEST_CASE("/api/status: one-way figures and status per cell, the reason when untrusted, the clock per agent") {
  LiveView view;
  test::OneWayBatchSpec spec;
  spec.clock_source = wire::ClockSource::Ptp;
  record(view, one_way_built(1, spec), "fra-1", "fra1", kT0 + 2 * kSecond);
  record(view, batch("ams1-a", "ams1", 1, 8'000'000, {"fra1"}), "ams1-a", "ams1", kT0 + 2 * kSecond);
  const std::string json =
      collector::http::render_status_json(view.snapshot(kT0 + 3 * kSecond), {}, kT0 + 3 * kSecond);
  CHECK(contains(json, R"("dst":"router1:862","agent":"fra-1","region":"eu-central","protocol":"stamp")"));
  CHECK(contains(json, R"("one_way":{"status":"reported","trusted":true,"reason":"","error_bound_ms":0.1,)"));
  CHECK(contains(json, R"("samples":10,"forward_p50_ms":30,"forward_p99_ms":31.5,"backward_p50_ms":5,"backward_p99_ms":6.25,)"));
  CHECK(contains(json, R"("one_way":{"status":"unsynchronised","trusted":false,"reason":"the agent's clock is not synchronised","error_bound_ms":9,)"));
  // Untrusted: no figures, whatever the agent sent beside the status.
  const std::size_t unsync = json.find(R"("status":"unsynchronised")");
  REQUIRE(unsync != std::string::npos);
  CHECK(json.find("forward_p50_ms", unsync) > json.find("}", unsync));
  // No one_way in the summary: null (TCP here, and the older agent's cell).
  CHECK(contains(json, R"("dst":"ams1:443")"));
  CHECK(contains(json, R"("dst":"fra1","agent":"ams1-a")"));
  CHECK(json.find(R"("one_way":null)") != std::string::npos);
  CHECK(contains(json, R"("clock":{"synchronised":true,"estimated_error_ms":0.04,"maximum_error_ms":0.25,"source":"ptp"})"));
  CHECK(contains(json, R"("agent":"ams1-a","region":"eu-central","pop":"ams1")"));
  const std::size_t ams = json.find(R"({"agent":"ams1-a")");
  REQUIRE(ams != std::string::npos);
  CHECK(json.find(R"("clock":null)", ams) != std::string::npos);
  // The page marks untrusted pairs and shows each agent's clock.
  CHECK(collector::http::status_page_html().find("oneway-untrusted") != std::string_view::npos);
  CHECK(collector::http::status_page_html().find("agents-clock") != std::string_view::npos);
}
