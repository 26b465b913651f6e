#include "bench/fleet/steady_phase.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

namespace vantage::fleet {

using Clock = std::chrono::steady_clock;

namespace {

void report_latency(Report& report, const agent::LatencyHistogram& h) {
  const auto ms = [&h](double p) { return static_cast<double>(h.percentile(p)) / 1e6; };
  report.number("ack_latency_count", static_cast<double>(h.count()), "acks timed");
  report.number("ack_p50_ms", ms(50), "ack latency p50", "ms", 2);
  report.number("ack_p90_ms", ms(90), "ack latency p90", "ms", 2);
  report.number("ack_p99_ms", ms(99), "ack latency p99", "ms", 2);
  report.number("ack_max_ms", static_cast<double>(h.max()) / 1e6, "ack latency max", "ms", 2);
}

}  // namespace

void report_connect_counts(Report& report, const std::string& prefix, const FleetStats& s) {
  report.number(prefix + "_full_handshakes", static_cast<double>(s.full_handshakes), "full handshakes");
  report.number(prefix + "_resumed_handshakes", static_cast<double>(s.resumed_handshakes), "resumed handshakes");
  report.number(prefix + "_tcp_failures", static_cast<double>(s.connect_failures), "TCP connects refused or timed out");
  report.number(prefix + "_tls_failures", static_cast<double>(s.tls_failures), "TLS handshakes failed (closed, timed out)");
}

SteadyResult run_steady_phase(FleetRun& run, Fleet& fleet, std::size_t agents, double interval_s,
                              double duration_s, const SteadyTick& tick) {
  SteadyResult result;
  Report& report = run.report;
  const double ramp_s = run.options.number("ramp-s", std::max(2.0, static_cast<double>(agents) / 500.0));
  const auto connect_timeout = std::chrono::milliseconds(
      static_cast<std::int64_t>(run.options.number("connect-timeout-s", 30 + static_cast<double>(agents) / 50.0) * 1000));

  // Agents make a batch every interval from the start, connected or not (as the real agent's
  // spool does), so a long connect phase never leaves a connected agent idle into the
  // collector's idle timeout. Latency is recorded in the measured window only.
  std::fprintf(stderr, "vantage-fleet: connecting %zu agents over %.1f s\n", agents, ramp_s);
  fleet.start_periodic(std::chrono::nanoseconds(static_cast<std::int64_t>(interval_s * 1e9)), 7);
  Window connect = run.begin();
  fleet.connect_all(std::chrono::milliseconds(static_cast<std::int64_t>(ramp_s * 1000)));
  bool all = false;
  FleetStats s = fleet.wait_until([agents](const FleetStats& st) { return st.connected_now >= agents; },
                                  connect_timeout, &all);
  run.end(connect);
  report.section("connect (ramp " + std::to_string(static_cast<int>(ramp_s)) + " s)");
  report.number("agents", static_cast<double>(agents), "agents");
  report.number("connected", static_cast<double>(s.connected_now), "connected");
  report.number("connect_s", connect.seconds(), "time until all connected (or gave up)", "s", 1);
  report_connect_counts(report, "connect", s);
  report.number("connect_sessions_lost", static_cast<double>(s.disconnects), "sessions ended after the handshake");
  report.number("connect_collector_cpu_s", connect.collector_cpu_s(), "collector CPU while connecting", "s", 2);
  const std::uint64_t handshakes = s.full_handshakes + s.resumed_handshakes;
  report.number("collector_ms_per_handshake",
                handshakes > 0 ? connect.collector_cpu_s() * 1000 / static_cast<double>(handshakes) : std::nan(""),
                "collector CPU per handshake (connect phase)", "ms", 3);
  std::fprintf(stderr, "vantage-fleet: %llu/%zu connected; sending for %.0f s\n",
               static_cast<unsigned long long>(s.connected_now), agents, duration_s);

  // Agents that connected late bring the batches they made meanwhile: the window starts once that
  // backlog is delivered (fewer unacked batches than 5 % of the agents), so it measures the steady
  // state rather than the tail of the connect phase (reported apart).
  const auto settle_start = Clock::now();
  bool settled = false;
  const std::size_t settled_below = std::max<std::size_t>(agents / 20, 1);
  fleet.wait_until([settled_below](const FleetStats& st) { return st.unacked_now < settled_below; },
                   std::chrono::seconds(static_cast<int>(run.options.number("settle-s", 120))), &settled);
  report.number("settle_s", std::chrono::duration<double>(Clock::now() - settle_start).count(),
                "backlog from the connect phase delivered after", "s", 1);

  // The measured window: a batch per agent per interval, random phase.
  const FleetStats before = fleet.stats(true);
  fleet.set_recording(true);
  Window steady = run.begin();
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<std::int64_t>(duration_s * 1000));
  std::uint64_t min_connected = agents;
  const Clock::duration period = tick ? Clock::duration(std::chrono::milliseconds(250)) : std::chrono::seconds(1);
  while (Clock::now() < deadline) {
    std::this_thread::sleep_for(std::min<Clock::duration>(period, deadline - Clock::now()));
    const FleetStats now = fleet.stats();
    min_connected = std::min(min_connected, now.connected_now);
    if (tick) tick(std::chrono::duration<double>(Clock::now() - steady.start).count(), now);
  }
  run.end(steady);
  fleet.stop_sending();
  const FleetStats during = fleet.stats();
  // Drain: what was made is acked (or the timeout says it never will be).
  bool drained = false;
  const FleetStats after = fleet.wait_until([](const FleetStats& st) { return st.unacked_now == 0; },
                                            std::chrono::seconds(static_cast<int>(run.options.number("drain-s", 30))),
                                            &drained);
  fleet.set_recording(false);

  report.section("steady (every " + std::to_string(interval_s).substr(0, 4) + " s, " +
                 std::to_string(static_cast<int>(duration_s)) + " s)");
  report.number("interval_s", interval_s, "report interval", "s", 1);
  report.number("min_connected", static_cast<double>(min_connected), "fewest agents connected during the window");
  const double acked = static_cast<double>(during.batches_acked - before.batches_acked);
  report.number("batches_acked", acked, "batches acked in the window");
  report.number("batches_per_s", acked / steady.seconds(), "batches acked per second", "/s", 1);
  report.number("summaries_per_s", acked * static_cast<double>(run.factory->targets()) / steady.seconds(),
                "summaries acked per second", "/s", 0);
  report.number("reconnects", static_cast<double>(after.full_handshakes + after.resumed_handshakes - s.full_handshakes -
                                                  s.resumed_handshakes),
                "sessions re-established (full + resumed)");
  report.number("retry_later", static_cast<double>(after.retry_later), "RetryLater acks");
  report.number("rejected", static_cast<double>(after.rejected), "Rejected acks");
  if (!after.last_reject_reason.empty()) report.text("reject_reason", after.last_reject_reason, "last rejection");
  report.number("ack_timeouts", static_cast<double>(after.ack_timeouts), "ack timeouts");
  report.number("unacked_at_end", static_cast<double>(after.unacked_now), "batches still unacked after draining");
  report_latency(report, after.ack_latency);
  run.report_window(steady, "steady_", "steady");

  result.all_connected = all;
  result.drained = drained;
  result.p99_ms = static_cast<double>(after.ack_latency.percentile(99)) / 1e6;
  result.stats = after;
  return result;
}

}  // namespace vantage::fleet
