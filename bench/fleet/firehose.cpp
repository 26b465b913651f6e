// firehose: K agents, each sending its next batch as soon as the previous is acked (or keeping W
// in flight), for D s: summaries stored per second and per collector CPU-second. Then, in the
// same run, VictoriaMetrics fed the same summaries as Influx lines by K clients for D s.
#include <cmath>
#include <cstdio>
#include <thread>

#include "bench/fleet/fleet_run.hpp"
#include "bench/fleet/scenarios.hpp"
#include "bench/fleet/victoria.hpp"

namespace vantage::fleet {

int run_firehose(const Options& options) {
  FleetRun run(options, "firehose");
  const std::size_t agents = options.count("agents", 8);
  const std::size_t targets = options.count("targets", 100);
  const double duration_s = options.number("duration-s", 20);
  const std::size_t window = std::max<std::uint64_t>(options.count("window", 1), 1);
  const std::string victoria = options.text("victoria", "/usr/bin/victoria-metrics");
  std::string error;
  if (!run.setup(agents, targets, error)) return setup_failed(error);
  Fleet& fleet = run.make_fleet(std::chrono::seconds(10));
  fleet.connect_all(std::chrono::milliseconds(500));
  bool all = false;
  fleet.wait_until([agents](const FleetStats& s) { return s.connected_now >= agents; }, std::chrono::seconds(30), &all);
  fleet.set_recording(true);
  fleet.start_window(window);
  // A second of warm-up (the first commits, page cache), then the measured window.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const FleetStats before = fleet.stats(true);
  Window w = run.begin();
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(duration_s * 1000)));
  run.end(w);
  const FleetStats after = fleet.stats();
  fleet.stop_sending();
  bool drained = false;
  fleet.wait_until([](const FleetStats& s) { return s.unacked_now == 0; }, std::chrono::seconds(30), &drained);
  fleet.set_recording(false);

  const double summaries = static_cast<double>(after.summaries_acked - before.summaries_acked);
  const double vantage_per_s = summaries / w.seconds();
  const double vantage_per_cpu = w.collector_cpu_s() > 0 ? summaries / w.collector_cpu_s() : std::nan("");
  Report& report = run.report;
  report.section("vantage-collector (SQLite), " + std::to_string(agents) + " agents, window " + std::to_string(window));
  report.number("agents", static_cast<double>(agents), "agents (connections)");
  report.number("window", static_cast<double>(window), "batches in flight per agent");
  report.number("batches_acked", static_cast<double>(after.batches_acked - before.batches_acked), "batches acked");
  report.number("summaries_per_s", vantage_per_s, "summaries stored per second", "/s");
  report.number("summaries_per_cpu_s", vantage_per_cpu, "summaries per collector CPU-second", "/CPU-s");
  report.number("ack_p50_ms", static_cast<double>(after.ack_latency.percentile(50)) / 1e6, "ack latency p50", "ms", 2);
  report.number("ack_p99_ms", static_cast<double>(after.ack_latency.percentile(99)) / 1e6, "ack latency p99", "ms", 2);
  report.number("retry_later", static_cast<double>(after.retry_later), "RetryLater acks");
  report.number("disconnects", static_cast<double>(after.disconnects), "sessions lost");
  run.report_window(w, "vantage_", "vantage");
  const StoreCheck check = run.stop_and_check();
  bool ok = all && drained && check.error.empty() && check.missing == 0 && check.duplicates == 0 && check.foreign == 0;

  if (!options.flag("no-victoria")) {
    // As many requests in flight as the agents have batches in flight: each HTTP/1.1 client has
    // one, each agent `window`.
    const std::size_t clients = agents * window;
    std::fprintf(stderr, "vantage-fleet: VictoriaMetrics, %zu clients for %.0f s\n", clients, duration_s);
    const VictoriaResult vm = run_victoria(victoria, run.work_dir, *run.factory, clients,
                                           std::chrono::milliseconds(static_cast<std::int64_t>(duration_s * 1000)));
    report.section("VictoriaMetrics (" + victoria + ", Influx line protocol over HTTP /write)");
    if (!vm.ok) {
      report.text("victoria_error", vm.error, "error");
      ok = false;
    } else {
      const double vm_per_s = static_cast<double>(vm.summaries) / vm.window_s;
      const double vm_per_cpu = vm.cpu_s > 0 ? static_cast<double>(vm.summaries) / vm.cpu_s : std::nan("");
      report.number("victoria_clients", static_cast<double>(clients), "HTTP clients (keep-alive, one request each)");
      report.number("victoria_requests", static_cast<double>(vm.requests), "requests answered 2xx");
      report.number("victoria_failed", static_cast<double>(vm.failed), "requests failed");
      report.number("victoria_summaries_per_s", vm_per_s, "summaries (lines) per second", "/s");
      report.number("victoria_summaries_per_cpu_s", vm_per_cpu, "summaries per VictoriaMetrics CPU-second", "/CPU-s");
      report.number("victoria_cores", vm.cpu_s / vm.window_s, "VictoriaMetrics CPU", "cores", 3);
      report.number("victoria_rss_bytes", static_cast<double>(vm.rss_bytes),
                    "VictoriaMetrics RSS at end (" + format_bytes(vm.rss_bytes) + ")", "bytes");
      report.number("victoria_hwm_bytes", static_cast<double>(vm.hwm_bytes),
                    "VictoriaMetrics peak RSS (" + format_bytes(vm.hwm_bytes) + ")", "bytes");
      report.number("victoria_request_p50_ms", vm.request_p50_ms, "request latency p50", "ms", 2);
      report.number("victoria_request_p99_ms", vm.request_p99_ms, "request latency p99", "ms", 2);
      report.number("victoria_simulator_cores", vm.self_cpu_s / vm.window_s, "simulator CPU (apart)", "cores", 3);
      report.section("ratio");
      report.number("ratio_per_cpu_s", vantage_per_cpu / vm_per_cpu,
                    "summaries per CPU-second, vantage / VictoriaMetrics", "x", 2);
      report.number("ratio_per_s", vantage_per_s / vm_per_s, "summaries per second, vantage / VictoriaMetrics", "x", 2);
    }
  }
  report.section("verdict");
  report.flag("ok", ok, "every acked batch stored once, both runs completed");
  report.print();
  return ok ? 0 : 1;
}

}  // namespace vantage::fleet
