// How late this machine wakes a sleeping thread right now: measured beside a timing test so that
// bounds which depend on scheduling (user-space receive stamps, taken after a wakeup) widen by
// what the machine actually did, instead of by a constant guessed for an idle one.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace vantage::agent::probes::test {

class WakeupLateness {
 public:
  WakeupLateness()
      : thread_([this] {
          using Clock = std::chrono::steady_clock;
          while (!stop_.load(std::memory_order_relaxed)) {
            const auto asked = Clock::now() + std::chrono::milliseconds(1);
            std::this_thread::sleep_until(asked);
            const auto late = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - asked).count();
            std::lock_guard lock(mutex_);
            samples_.push_back(late);
          }
        }) {}
  ~WakeupLateness() { stop(); }
  WakeupLateness(const WakeupLateness&) = delete;
  WakeupLateness& operator=(const WakeupLateness&) = delete;

  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }
  // Nanoseconds past the asked time; the worst and the median wakeup while it ran.
  std::int64_t worst() { return quantile(1.0); }
  std::int64_t median() { return quantile(0.5); }

 private:
  std::int64_t quantile(double q) {
    std::lock_guard lock(mutex_);
    if (samples_.empty()) return 0;
    std::vector<std::int64_t> v = samples_;
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
  }

  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<std::int64_t> samples_;
  std::thread thread_;  // last: started once the members it uses exist
};

}  // namespace vantage::agent::probes::test
