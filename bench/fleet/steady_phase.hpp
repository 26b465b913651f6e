// The steady fleet as a phase of its own, shared by `steady` and `hostile` (which runs it while
// hostile connections come in): connect with a ramp, send periodically, drain, report.
#pragma once

#include <cstddef>

#include "bench/fleet/fleet_run.hpp"

namespace vantage::fleet {

struct SteadyResult {
  bool all_connected = false;
  bool drained = false;
  double p99_ms = 0.0;
  FleetStats stats;
};

SteadyResult run_steady_phase(FleetRun& run, Fleet& fleet, std::size_t agents, double interval_s,
                              double duration_s);

}  // namespace vantage::fleet
