// The send schedule every prober (UDP echo, TCP connect, ICMP echo) spreads its probes with:
// per-target randomised deadlines, so agents started together do not probe in lockstep.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace vantage::agent::probes {

// splitmix64: a full-period 64-bit generator; jitter only needs to decorrelate agents, not to
// resist prediction.
inline std::uint64_t next_random(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
inline double uniform01(std::uint64_t& state) noexcept {
  return static_cast<double>(next_random(state) >> 11) * 0x1.0p-53;
}

// interval_ns scaled by a factor uniform in [1 - jitter, 1 + jitter), never below 1 ns.
inline std::int64_t jittered_interval(std::int64_t interval_ns, double jitter,
                                      std::uint64_t& state) noexcept {
  const double factor = 1.0 + jitter * (2.0 * uniform01(state) - 1.0);
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(interval_ns) * factor));
}

// One CLOCK_MONOTONIC deadline per target, in the order the targets were added. Each target
// starts at a random phase within its first interval and every gap is the mean interval times
// uniform [1 - jitter, 1 + jitter). Deadlines advance from the previous deadline, not from when
// the timer fired, so a late wakeup delays one probe without lowering the rate; a target more
// than an interval behind (suspend, a starved thread) resumes from now instead of firing the
// missed probes back to back. The prober arms one timer for earliest(): a wakeup per probe, not
// per target. Nothing is allocated after add().
class ProbeSchedule {
 public:
  // Forgets every target; `seed` 0 is as good as any other.
  void reset(double jitter, std::uint64_t seed) {
    jitter_ = jitter;
    rng_state_ = seed;
    entries_.clear();
  }
  void reserve(std::size_t targets) { entries_.reserve(targets); }

  // A target probed rate_per_s times a second on average (> 0); returns its index.
  std::size_t add(double rate_per_s, std::int64_t now_ns) {
    Entry e;
    e.interval_ns = std::max<std::int64_t>(1, std::llround(1e9 / rate_per_s));
    e.next_due_ns = now_ns + static_cast<std::int64_t>(static_cast<double>(e.interval_ns) * uniform01(rng_state_));
    entries_.push_back(e);
    return entries_.size() - 1;
  }

  // Sends nothing more to target i (a probe count reached).
  void finish(std::size_t i) noexcept { entries_[i].active = false; }

  // Pauses target i (its name has no address) or resumes it; a resumed target starts again at a
  // random phase within one interval from now_ns, as a new one would.
  void set_active(std::size_t i, bool active, std::int64_t now_ns) noexcept {
    Entry& e = entries_[i];
    if (active && !e.active) {
      e.next_due_ns = now_ns + static_cast<std::int64_t>(static_cast<double>(e.interval_ns) * uniform01(rng_state_));
    }
    e.active = active;
  }
  [[nodiscard]] bool active(std::size_t i) const noexcept { return entries_[i].active; }

  // The earliest deadline of a target still active; INT64_MAX when there is none.
  [[nodiscard]] std::int64_t earliest() const noexcept {
    std::int64_t earliest = std::numeric_limits<std::int64_t>::max();
    for (const Entry& e : entries_) {
      if (e.active) earliest = std::min(earliest, e.next_due_ns);
    }
    return earliest;
  }

  // Calls send(i) for every active target due at now_ns, in index order, and moves its
  // deadline on.
  template <typename Send>
  void run_due(std::int64_t now_ns, Send&& send) {
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      Entry& e = entries_[i];
      if (!e.active || e.next_due_ns > now_ns) {
        continue;
      }
      send(i);
      e.next_due_ns += jittered_interval(e.interval_ns, jitter_, rng_state_);
      if (e.next_due_ns < now_ns - e.interval_ns) {
        e.next_due_ns = now_ns + jittered_interval(e.interval_ns, jitter_, rng_state_);
      }
    }
  }

  [[nodiscard]] std::int64_t interval_ns(std::size_t i) const noexcept { return entries_[i].interval_ns; }
  [[nodiscard]] std::int64_t next_due_ns(std::size_t i) const noexcept { return entries_[i].next_due_ns; }

 private:
  struct Entry {
    std::int64_t interval_ns = 0;
    std::int64_t next_due_ns = 0;
    bool active = true;
  };
  std::vector<Entry> entries_;
  double jitter_ = 0.0;
  std::uint64_t rng_state_ = 0;
};

}  // namespace vantage::agent::probes
