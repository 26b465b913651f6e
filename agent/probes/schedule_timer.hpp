// The one timer a prober's targets share, armed for the earliest due probe of its
// ProbeSchedule. The TCP and ICMP probers send from it; the UDP prober arms its own, as it also
// ends each target after its count.
#pragma once

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <system_error>

#include "agent/probes/handler_memory.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/clock.hpp"

namespace vantage::agent::probes {

// Only one wait is ever outstanding, so its handler memory is reused and arming never
// allocates. Used from the io_context's thread only.
class ScheduleTimer {
 public:
  explicit ScheduleTimer(asio::io_context& io) : timer_(io) {}
  ScheduleTimer(const ScheduleTimer&) = delete;
  ScheduleTimer& operator=(const ScheduleTimer&) = delete;

  // Waits for schedule.earliest(); then, unless cancelled or sending() is false, calls
  // send(target index, now) for every due target and arms again. schedule must outlive the wait.
  template <typename Sending, typename Send>
  void arm(ProbeSchedule& schedule, Sending sending, Send send) {
    if (schedule.earliest() == std::numeric_limits<std::int64_t>::max()) {
      return;  // every target paused or finished: armed again when one resumes
    }
    timer_.expires_at(platform::steady_time(schedule.earliest()));
    timer_.async_wait(with_memory(memory_, [this, &schedule, sending, send](const std::error_code& ec) {
      // A wait that completed just before the prober's cancel still sends nothing.
      if (!ec && sending()) {
        const std::int64_t now = platform::monotonic_ns();
        schedule.run_due(now, [&send, now](std::size_t i) { send(i, now); });
        arm(schedule, sending, send);
      }
    }));
  }

  void cancel() { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
  HandlerMemory memory_;
};

}  // namespace vantage::agent::probes
