// hostile: the steady fleet while hostile connections come in (half-open, slow handshakes,
// peers that never read their acks, garbage), all re-opened whenever the collector closes them.
// Every steady agent must connect and be acked; the collector's log growth is reported in lines
// per minute, in total and for the loudest source address.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "bench/fleet/fleet_run.hpp"
#include "bench/fleet/hostile_peers.hpp"
#include "bench/fleet/scenarios.hpp"
#include "bench/fleet/steady_phase.hpp"

namespace vantage::fleet {
namespace {

using Clock = std::chrono::steady_clock;

struct LogGrowth {
  std::uint64_t lines = 0;
  std::string loudest;
  std::uint64_t loudest_lines = 0;
  std::size_t sources = 0;
};

// Lines written since `from`; each is attributed to the first IPv4 address it names.
LogGrowth log_growth(const std::filesystem::path& log, std::uintmax_t from) {
  LogGrowth g;
  std::ifstream in(log, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(from));
  std::map<std::string, std::uint64_t> per_source;
  std::string line;
  while (std::getline(in, line)) {
    ++g.lines;
    for (std::size_t at = line.find("127."); at != std::string::npos; at = line.find("127.", at + 1)) {
      std::size_t end = at;
      int dots = 0;
      while (end < line.size() && (std::isdigit(static_cast<unsigned char>(line[end])) != 0 || line[end] == '.')) {
        dots += line[end] == '.';
        ++end;
      }
      if (dots == 3) {
        ++per_source[line.substr(at, end - at)];
        break;
      }
    }
  }
  g.sources = per_source.size();
  for (const auto& [source, n] : per_source) {
    if (n > g.loudest_lines) {
      g.loudest = source;
      g.loudest_lines = n;
    }
  }
  return g;
}

}  // namespace

int run_hostile(const Options& options) {
  FleetRun run(options, "hostile");
  const auto [agents, targets, interval_s, duration_s] = FleetShape{}.read(options);
  const double max_p99_ms = options.number("max-p99-ms", 0);
  const double lead_s = options.number("hostile-lead-s", 5);
  std::string error;
  if (!run.setup(agents, targets, error)) return setup_failed(error);
  HostileConfig hc;
  hc.collector = run.collector->endpoint();
  hc.half_open_main = options.count("half-open-main", 5000);
  hc.half_open_per_source = options.count("half-open-per-source", 500);
  hc.sources = options.count("sources", 10);
  hc.slow = options.count("slow", 50);
  hc.slow_byte_s = options.number("slow-byte-s", 2);
  hc.garbage = options.count("garbage", 20);
  hc.garbage_pause_s = options.number("garbage-pause-s", 0.2);
  hc.non_reader_interval_s = options.number("non-reader-interval-s", 0.1);
  const std::size_t non_readers = options.count("non-readers", 20);
  for (std::size_t i = 0; i < non_readers; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "hostile-%03zu", i);
    const CertAndKey cert = run.pki->mint_agent(id, run.regions[0], "hostile", error);
    platform::tls::TlsContextOptions tls;
    tls.ca_pem = run.pki->ca_pem();
    tls.cert_pem = cert.cert_pem;
    tls.key_pem = cert.key_pem;
    auto context = platform::tls::TlsContext::create(tls);
    if (!context) {
      std::fprintf(stderr, "vantage-fleet: %s\n", context.error().c_str());
      return 2;
    }
    hc.non_readers.push_back({{id, run.regions[0], "hostile", static_cast<std::uint32_t>(agents + i)}, *context});
  }
  hc.client_hello = make_client_hello(hc.non_readers.empty() ? *run.agent_setups.front().tls : *hc.non_readers.front().tls,
                                      hc.server_name);
  const std::size_t hostile_total = hc.half_open_main + hc.half_open_per_source * hc.sources + hc.slow + non_readers + hc.garbage;

  // The hostile child is forked before the fleet starts any thread.
  std::error_code ec;
  const std::uintmax_t log_from = std::filesystem::file_size(run.collector->log_path(), ec);
  const auto hostile_start = Clock::now();
  HostileChild child;
  if (!child.start(hc, *run.factory, error)) {
    std::fprintf(stderr, "vantage-fleet: %s\n", error.c_str());
    return 2;
  }
  std::fprintf(stderr, "vantage-fleet: %zu hostile connections; the fleet follows in %.0f s\n", hostile_total, lead_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(lead_s * 1000)));

  Fleet& fleet = run.make_fleet(std::chrono::nanoseconds(static_cast<std::int64_t>(interval_s * 1e9)));
  Report& report = run.report;
  report.section("hostile connections (forked child, re-opened when closed)");
  report.number("hostile_half_open_main", static_cast<double>(hc.half_open_main), "half-open from 127.0.0.200");
  report.number("hostile_half_open_per_source", static_cast<double>(hc.half_open_per_source), "half-open per 127.0.1.X");
  report.number("hostile_sources", static_cast<double>(hc.sources), "127.0.1.X sources");
  report.number("hostile_slow", static_cast<double>(hc.slow), "slow handshakes (a byte every " + std::to_string(hc.slow_byte_s).substr(0, 3) + " s)");
  report.number("hostile_non_readers", static_cast<double>(non_readers), "TLS peers that never read acks");
  report.number("hostile_garbage", static_cast<double>(hc.garbage), "garbage senders");

  const SteadyResult steady = run_steady_phase(run, fleet, agents, interval_s, duration_s);
  const double minutes = std::chrono::duration<double>(Clock::now() - hostile_start).count() / 60.0;
  const auto counts = child.stop();
  const LogGrowth growth = log_growth(run.collector->log_path(), log_from);

  report.section("hostile side (counts from the child)");
  for (const auto& [name, value] : counts) report.number("hostile_" + name, static_cast<double>(value), name);
  report.section("collector log growth (stderr, from the hostile start)");
  report.number("log_minutes", minutes, "minutes", "min", 2);
  report.number("log_lines", static_cast<double>(growth.lines), "lines");
  report.number("log_lines_per_min", static_cast<double>(growth.lines) / minutes, "lines per minute", "/min", 0);
  report.number("log_sources", static_cast<double>(growth.sources), "source addresses named");
  report.text("log_loudest_source", growth.loudest, "loudest source address");
  report.number("log_loudest_lines_per_min", static_cast<double>(growth.loudest_lines) / minutes,
                "its lines per minute", "/min", 0);
  report.number("steady_agents_acked", static_cast<double>(steady.stats.agents_acked), "steady agents acked at least once");

  const StoreCheck check = run.stop_and_check();
  bool ok = steady.all_connected && steady.stats.agents_acked >= agents && steady.drained && check.error.empty() &&
            check.missing == 0 && check.duplicates == 0 && check.foreign == 0;
  if (max_p99_ms > 0 && steady.p99_ms > max_p99_ms) ok = false;
  report.section("verdict");
  report.flag("ok", ok, "every steady agent connected and acked, every acked batch stored once");
  report.print();
  return ok ? 0 : 1;
}

}  // namespace vantage::fleet
