// The steady fleet as a phase of its own, shared by `steady` and `hostile` (which runs it while
// hostile connections come in): connect with a ramp, send periodically, drain, report.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "bench/fleet/fleet_run.hpp"

namespace vantage::fleet {

struct SteadyResult {
  bool all_connected = false;
  bool drained = false;
  double p99_ms = 0.0;
  FleetStats stats;
};

// Called every 250 ms of the measured window with the seconds since it began and the fleet's
// counters (a scenario injects faults and follows recovery from it).
using SteadyTick = std::function<void(double elapsed_s, const FleetStats& now)>;

// The handshake and connect counts of a connect phase, as PREFIX_full_handshakes,
// PREFIX_resumed_handshakes, PREFIX_tcp_failures and PREFIX_tls_failures.
void report_connect_counts(Report& report, const std::string& prefix, const FleetStats& s);

SteadyResult run_steady_phase(FleetRun& run, Fleet& fleet, std::size_t agents, double interval_s,
                              double duration_s, const SteadyTick& tick = {});

}  // namespace vantage::fleet
