// steady: N agents, each sending a batch every I seconds (random phase) for D seconds; ack
// latency, collector CPU and memory, then every acked batch checked in the store.
#include <cstdio>
#include <thread>

#include "bench/fleet/fleet_run.hpp"
#include "bench/fleet/scenarios.hpp"
#include "bench/fleet/steady_phase.hpp"

namespace vantage::fleet {

using Clock = std::chrono::steady_clock;

int run_steady(const Options& options) {
  FleetRun run(options, "steady");
  const auto [agents, targets, interval_s, duration_s] = FleetShape{}.read(options);
  const double max_p99_ms = options.number("max-p99-ms", 0);
  std::string error;
  if (!run.setup(agents, targets, error)) return setup_failed(error);
  Fleet& fleet = run.make_fleet(std::chrono::nanoseconds(static_cast<std::int64_t>(interval_s * 1e9)));
  SteadyResult result = run_steady_phase(run, fleet, agents, interval_s, duration_s);
  const StoreCheck check = run.stop_and_check();
  bool ok = result.all_connected && result.drained && check.error.empty() && check.missing == 0 &&
            check.duplicates == 0 && check.foreign == 0;
  if (max_p99_ms > 0 && result.p99_ms > max_p99_ms) ok = false;
  run.report.section("verdict");
  run.report.flag("ok", ok, "every agent connected, every acked batch stored once, p99 in bound");
  run.report.print();
  return ok ? 0 : 1;
}

}  // namespace vantage::fleet
