// A 64-bit statistic written by one thread and read by any: the packet counters the probers
// and the reflector expose.
#pragma once

#include <atomic>
#include <cstdint>

namespace vantage::platform {

// Relaxed is enough: each counter is a monotonic statistic on its own, no reader infers
// anything about other memory from its value, and 64-bit atomics are lock-free on all three
// targets (ldrexd/strexd on armhf). The single writer bumps with load + store, avoiding a
// read-modify-write per packet; a second writer would lose counts.
class StatCounter {
 public:
  void bump() noexcept { v_.store(v_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  std::uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

}  // namespace vantage::platform
