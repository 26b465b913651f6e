// storm: N agents connected and acked once; the collector is killed (-9) and restarted on the
// same state; the agents reconnect with jittered backoff. How long until every one is back with
// an ack for a new batch, full vs resumed handshakes, and the collector's CPU per handshake then
// against CPU per full handshake when the fleet first connected.
#include <cmath>
#include <cstdio>
#include <thread>

#include "bench/fleet/fleet_run.hpp"
#include "bench/fleet/scenarios.hpp"
#include "bench/fleet/steady_phase.hpp"
#include "platform/clock.hpp"

namespace vantage::fleet {

int run_storm(const Options& options) {
  FleetRun run(options, "storm");
  const std::size_t agents = options.count("agents", 1000);
  const std::size_t targets = options.count("targets", 10);
  const double ramp_s = options.number("ramp-s", std::max(2.0, static_cast<double>(agents) / 500.0));
  const auto timeout = std::chrono::milliseconds(
      static_cast<std::int64_t>(options.number("timeout-s", 120 + static_cast<double>(agents) / 50.0) * 1000));
  std::string error;
  if (!run.setup(agents, targets, error)) return setup_failed(error);
  Fleet& fleet = run.make_fleet(std::chrono::seconds(10));
  Report& report = run.report;

  // Phase 1: everyone connects (full handshakes) and gets one batch acked.
  Window first = run.begin();
  fleet.connect_all(std::chrono::milliseconds(static_cast<std::int64_t>(ramp_s * 1000)));
  fleet.send_one_each();
  bool all_first = false;
  const FleetStats s1 = fleet.wait_until(
      [agents](const FleetStats& s) { return s.agents_acked >= agents && s.unacked_now == 0; }, timeout, &all_first);
  run.end(first);
  const std::uint64_t first_handshakes = s1.full_handshakes + s1.resumed_handshakes;
  report.section("initial connect (ramp " + std::to_string(static_cast<int>(ramp_s)) + " s), one batch each");
  report.number("agents", static_cast<double>(agents), "agents");
  report.number("initial_acked_agents", static_cast<double>(s1.agents_acked), "agents acked");
  report.number("initial_s", first.seconds(), "time until all acked", "s", 1);
  report_connect_counts(report, "initial", s1);
  report.number("initial_collector_cpu_s", first.collector_cpu_s(), "collector CPU", "s", 2);
  const double ms_full = first_handshakes > 0 ? first.collector_cpu_s() * 1000 / static_cast<double>(first_handshakes) : std::nan("");
  report.number("initial_collector_ms_per_handshake", ms_full, "collector CPU per (full) handshake, incl. Hello+batch", "ms", 3);

  // Sessions settle (tickets arrive right after the handshake); then the kill.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const FleetStats before = fleet.stats();
  const std::int64_t kill_ns = platform::monotonic_ns();
  run.collector->kill9();
  fleet.mark_storm();
  if (!run.collector->start(error)) {
    std::fprintf(stderr, "vantage-fleet: restart: %s\n", error.c_str());
    return 2;
  }
  const std::int64_t restarted_ns = platform::monotonic_ns();
  Window storm;
  storm.start = std::chrono::steady_clock::now();
  storm.self_start = self_cpu_s();  // collector_start stays zero: a new process, its CPU from birth
  bool all_back = false;
  const FleetStats s2 = fleet.wait_until([agents](const FleetStats& s) { return s.storm_done >= agents; }, timeout, &all_back);
  run.end(storm);
  const std::uint64_t full = s2.full_handshakes - before.full_handshakes;
  const std::uint64_t resumed = s2.resumed_handshakes - before.resumed_handshakes;
  const double back_s = s2.storm_last_ack_ns > kill_ns ? static_cast<double>(s2.storm_last_ack_ns - kill_ns) / 1e9 : std::nan("");
  report.section("storm: kill -9, restart on the same state, agents reconnect (backoff with full jitter)");
  report.number("restart_s", static_cast<double>(restarted_ns - kill_ns) / 1e9, "collector listening again after", "s", 2);
  report.number("storm_back_agents", static_cast<double>(s2.storm_done), "agents back with a new batch acked");
  report.number("storm_all_back_s", back_s, "time from kill until every agent is back", "s", 2);
  report.number("storm_full_handshakes", static_cast<double>(full), "full handshakes");
  report.number("storm_resumed_handshakes", static_cast<double>(resumed), "resumed handshakes");
  report.number("storm_connect_failures", static_cast<double>(s2.connect_failures - before.connect_failures), "refused or timed-out connects");
  report.number("storm_tls_failures", static_cast<double>(s2.tls_failures - before.tls_failures), "failed handshakes");
  report.number("storm_collector_cpu_s", storm.collector_cpu_s(), "collector CPU (new process, start to all back)", "s", 2);
  const double ms_storm = full + resumed > 0 ? storm.collector_cpu_s() * 1000 / static_cast<double>(full + resumed) : std::nan("");
  report.number("storm_collector_ms_per_handshake", ms_storm, "collector CPU per handshake, incl. Hello+batch", "ms", 3);
  report.number("storm_vs_initial_cpu_per_handshake", ms_storm / ms_full, "storm / initial CPU per handshake", "x", 2);
  report.number("storm_collector_hwm_bytes", static_cast<double>(storm.collector_stop.hwm_bytes),
                "collector peak RSS after restart (" + format_bytes(storm.collector_stop.hwm_bytes) + ")", "bytes");
  report.number("storm_simulator_cores", storm.seconds() > 0 ? storm.self_cpu_s() / storm.seconds() : 0, "simulator CPU (apart)", "cores", 3);

  fleet.stop_sending();
  bool drained = false;
  fleet.wait_until([](const FleetStats& s) { return s.unacked_now == 0; }, std::chrono::seconds(30), &drained);
  const StoreCheck check = run.stop_and_check();
  const bool ok = all_first && all_back && drained && check.error.empty() && check.missing == 0 && check.duplicates == 0 && check.foreign == 0;
  report.section("verdict");
  report.flag("ok", ok, "every agent back, every acked batch stored once");
  report.print();
  return ok ? 0 : 1;
}

}  // namespace vantage::fleet
