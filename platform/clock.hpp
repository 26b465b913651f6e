// Clock reads in signed nanoseconds: CLOCK_MONOTONIC for intervals and deadlines,
// CLOCK_REALTIME for labels and for comparing with the kernel's receive stamps.
#pragma once

#include <time.h>

#include <chrono>
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

// A CLOCK_MONOTONIC deadline as a steady_clock time point (for Asio's steady_timer): libstdc++'s
// steady_clock reads CLOCK_MONOTONIC, so the two share an epoch.
inline std::chrono::steady_clock::time_point steady_time(std::int64_t monotonic) noexcept {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(monotonic));
}

// CLOCK_REALTIME - CLOCK_MONOTONIC now: moves the kernel's receive stamps (CLOCK_REALTIME) onto
// the monotonic time line. The realtime read is bracketed by two monotonic reads and the
// narrowest of up to three brackets counts: a thread preempted inside a bracket (milliseconds on
// a loaded host) would otherwise shift the result by half the time it lost.
inline std::int64_t realtime_offset_ns() noexcept {
  std::int64_t best_width = -1;
  std::int64_t best = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const std::int64_t before = monotonic_ns();
    const std::int64_t real = realtime_ns();
    const std::int64_t width = monotonic_ns() - before;
    if (best_width < 0 || width < best_width) {
      best_width = width;
      best = real - (before + width / 2);
    }
    if (best_width < 2'000) break;  // an uninterrupted bracket takes well under a microsecond
  }
  return best;
}

}  // namespace vantage::platform
