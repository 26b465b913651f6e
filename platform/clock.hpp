// Clock reads in signed nanoseconds: CLOCK_MONOTONIC for intervals and deadlines,
// CLOCK_REALTIME for labels and for comparing with the kernel's receive stamps.
#pragma once

#include <time.h>

#include <cstdint>

namespace vantage::platform {

inline std::int64_t timespec_ns(const timespec& ts) noexcept {
  // tv_sec is 32 bits on armhf: widen before multiplying.
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<std::int64_t>(ts.tv_nsec);
}

inline std::int64_t clock_ns(clockid_t clock) noexcept {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return timespec_ns(ts);
}

inline std::int64_t monotonic_ns() noexcept { return clock_ns(CLOCK_MONOTONIC); }
inline std::int64_t realtime_ns() noexcept { return clock_ns(CLOCK_REALTIME); }

}  // namespace vantage::platform
