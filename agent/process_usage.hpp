// What the agent process itself uses, for the self-metrics in every batch.
#pragma once

#include <cstdint>

namespace vantage::agent {

struct ProcessUsage {
  std::uint64_t rss_bytes = 0;    // resident set size now (0 if /proc/self/statm is unreadable)
  std::uint64_t cpu_user_ns = 0;  // CPU time used so far, all threads
  std::uint64_t cpu_system_ns = 0;
};

ProcessUsage read_process_usage() noexcept;

// Wall-clock time (ns since the Unix epoch) at which this process started: fixed at start-up.
std::int64_t process_start_ns() noexcept;

}  // namespace vantage::agent
