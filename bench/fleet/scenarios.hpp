// The simulator's scenarios; each prints a table and a final JSON line, and returns the exit code.
#pragma once

#include "bench/fleet/options.hpp"

namespace vantage::fleet {

int run_steady(const Options& options);
int run_firehose(const Options& options);
int run_storm(const Options& options);
int run_hostile(const Options& options);
int run_jetstream(const Options& options);

}  // namespace vantage::fleet
