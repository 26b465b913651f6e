// The one timer a prober's targets share: it wakes on the slot grid of the prober's
// ProbeSchedule for the probes due, and, for a prober that reads replies in batches (kernel
// receive timestamps make the read time irrelevant), also to read the replies still awaited.
#pragma once

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <system_error>
#include <vector>

#include "agent/probes/handler_memory.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/clock.hpp"

namespace vantage::agent::probes {

// Which targets still await the reply to their latest probe, so that a prober reading replies
// only at its wakeups knows whether to wake just to read, and when. A read-only wakeup that
// finds nothing doubles the wait before the next one (up to kMaxReadDelayNs): a lossy target
// costs a few wakeups per probe, not one per slot until its timeout. A reply read late keeps
// its kernel stamp, so the delay moves no RTT; it only delays when the aggregator sees it.
class ReplyWait {
 public:
  static constexpr std::int64_t kMaxReadDelayNs = 64'000'000;

  void resize(std::size_t targets) {
    until_.assign(targets, 0);
    seq_.assign(targets, 0);
    waiting_ = 0;
  }
  void sent(std::size_t i, std::uint64_t seq, std::int64_t now_ns, std::int64_t timeout_ns) noexcept {
    if (until_[i] == 0) ++waiting_;
    until_[i] = std::max<std::int64_t>(1, now_ns + timeout_ns);
    seq_[i] = seq;
  }
  void answered(std::size_t i, std::uint64_t seq) noexcept {
    if (until_[i] != 0 && seq == seq_[i]) {
      until_[i] = 0;
      --waiting_;
    }
  }
  // A target no longer probed (paused, removed) awaits nothing.
  void forget(std::size_t i) noexcept {
    if (until_[i] != 0) {
      until_[i] = 0;
      --waiting_;
    }
  }
  [[nodiscard]] std::size_t waiting() const noexcept { return waiting_; }

  // After a wakeup at now_ns that sent `sent` probes and read `read` replies: the time of the
  // next read-only wakeup, INT64_MAX when nothing is awaited.
  // The delay is one slot after progress and doubles after a wakeup that found nothing, never
  // beyond kMaxReadDelayNs whatever the slot: a kernel stamp is trusted only if read within a
  // second of arrival (platform::kMaxRxStampAgeNs).
  std::int64_t next_read(std::int64_t now_ns, std::size_t sent, std::size_t read, std::int64_t slot_ns) noexcept {
    const std::int64_t first = std::min(slot_ns, kMaxReadDelayNs);
    if (sent != 0 || read != 0) {
      delay_ns_ = first;
    } else {
      // A wakeup that neither sent nor read: give up on probes past their timeout.
      for (std::size_t i = 0; i < until_.size() && waiting_ != 0; ++i) {
        if (until_[i] != 0 && until_[i] <= now_ns) forget(i);
      }
      delay_ns_ = std::min(kMaxReadDelayNs, std::max(first, 2 * delay_ns_));
    }
    return waiting_ == 0 ? std::numeric_limits<std::int64_t>::max() : now_ns + delay_ns_;
  }

 private:
  std::vector<std::int64_t> until_;  // 0: not waiting; else when its latest probe times out
  std::vector<std::uint64_t> seq_;
  std::size_t waiting_ = 0;
  std::int64_t delay_ns_ = 0;
};

// For probers that read replies as they arrive (their socket waits of their own).
struct NoBatchedReads {
  std::size_t read(std::int64_t) noexcept { return 0; }
  std::int64_t next_read(std::int64_t, std::size_t, std::size_t) noexcept {
    return std::numeric_limits<std::int64_t>::max();
  }
};

// Only one wait is ever outstanding, so its handler memory is reused and arming never
// allocates. Used from the io_context's thread only.
class ScheduleTimer {
 public:
  explicit ScheduleTimer(asio::io_context& io) : timer_(io) {}
  ScheduleTimer(const ScheduleTimer&) = delete;
  ScheduleTimer& operator=(const ScheduleTimer&) = delete;

  // Waits for the schedule's next grid wakeup or the next read-only wakeup, whichever is first;
  // then calls reads.read(now) (replies queued since the last wakeup), and, unless cancelled or
  // sending() is false, send(target index, now) for every due target, and arms again.
  // schedule and reads must outlive the wait. Reads: read(now) -> replies read;
  // next_read(now, sent, read) -> next read-only wakeup or INT64_MAX. A re-arm after a cancel
  // (a target's address changed) keeps the read-only wakeup already planned.
  template <typename Sending, typename Send, typename Reads = NoBatchedReads>
  void arm(ProbeSchedule& schedule, Sending sending, Send send, Reads* reads = nullptr) {
    const std::int64_t at = std::min(schedule.next_wake(), read_at_);
    if (at == std::numeric_limits<std::int64_t>::max()) {
      return;  // every target paused or finished and nothing awaited: armed again on a change
    }
    timer_.expires_at(platform::steady_time(at));
    timer_.async_wait(with_memory(memory_, [this, &schedule, sending, send, reads](const std::error_code& ec) {
      // A wait that completed just before the prober's cancel still sends nothing.
      if (ec || !sending()) {
        return;
      }
      const std::int64_t now = platform::monotonic_ns();
      const std::size_t read = reads != nullptr ? reads->read(now) : 0;
      const std::size_t sent = schedule.run_due(now, [&send, now](std::size_t i) { send(i, now); });
      read_at_ = std::numeric_limits<std::int64_t>::max();
      if (reads != nullptr) {
        // Counted from the boundary this wakeup was for (now is a little past it), then put on
        // the grid, so a read-only wakeup joins the other probers' wakeups one delay later.
        const SlotGrid& grid = schedule.grid();
        const std::int64_t next = reads->next_read(grid.boundary_at_or_before(now), sent, read);
        if (next != std::numeric_limits<std::int64_t>::max()) read_at_ = grid.boundary_at_or_after(next);
      }
      arm(schedule, sending, send, reads);
    }));
  }

  void cancel() { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
  HandlerMemory memory_;
  std::int64_t read_at_ = std::numeric_limits<std::int64_t>::max();  // the next read-only wakeup
};

}  // namespace vantage::agent::probes
