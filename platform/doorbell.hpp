// Wakes a sleeping consumer thread when a producer has queued enough for it, so the consumer
// sleeps until it has work or a deadline instead of polling.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stop_token>

#include "platform/clock.hpp"

namespace vantage::platform {

// ring() from any thread; wait_until() from the one consumer. A ring while nobody waits is
// kept for the next wait, so a wakeup is never lost between the consumer's check and its sleep.
class Doorbell {
 public:
  void ring() {
    {
      std::lock_guard lock(mutex_);
      rung_ = true;
    }
    cv_.notify_one();
  }

  // Sleeps until ring(), stop, or deadline_ns (CLOCK_MONOTONIC), whichever is first; true when
  // rung.
  bool wait_until(std::stop_token stop, std::int64_t deadline_ns) {
    std::unique_lock lock(mutex_);
    cv_.wait_until(lock, stop, steady_time(deadline_ns), [this] { return rung_; });
    const bool rung = rung_;
    rung_ = false;
    return rung;
  }

 private:
  std::mutex mutex_;
  std::condition_variable_any cv_;  // allocates once, here, not per wait
  bool rung_ = false;
};

}  // namespace vantage::platform
