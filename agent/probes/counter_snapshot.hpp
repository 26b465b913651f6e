// counters() of the probers and the reflector: the live counters, written by the io_context's
// thread, read into the plain struct any thread gets.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

inline std::uint64_t counter_value(const platform::StatCounter& c) noexcept { return c.get(); }
inline std::uint64_t counter_value(const std::atomic<std::uint64_t>& c) noexcept {
  return c.load(std::memory_order_relaxed);
}

// Snapshot holds std::uint64_t members only, and the counters come in the order of its members.
template <typename Snapshot, typename... Counters>
Snapshot snapshot_of(const Counters&... counters) noexcept {
  static_assert(std::is_aggregate_v<Snapshot> && sizeof(Snapshot) == sizeof...(Counters) * sizeof(std::uint64_t),
                "one counter for each member of the snapshot");
  return Snapshot{counter_value(counters)...};
}

}  // namespace vantage::agent::probes
