// The send schedule every prober (UDP echo, TCP connect, ICMP echo) spreads its probes with:
// per-target randomised deadlines, so agents started together do not probe in lockstep, served
// from a timing wheel on a coarse, randomly phased slot grid, so a prober wakes once per slot
// for all the probes due in it instead of once per probe.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
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

// Where the slot grid lies: boundaries at phase_ns + k * slot_ns. One grid per agent (the
// measurement draws the phase at random, so a fleet's agents do not wake in step), shared by
// its probers so that their wakeups coincide.
struct SlotGrid {
  static constexpr std::int64_t kDefaultSlotNs = 10'000'000;  // 10 ms
  static constexpr std::int64_t kMinSlotNs = 1'000;
  std::int64_t slot_ns = kDefaultSlotNs;
  std::int64_t phase_ns = 0;  // in [0, slot_ns)

  // A slot no longer than a quarter of the shortest probe interval (so a target gets at most
  // one probe per slot however its gaps are jittered), than one holding kMaxProbesPerSlot probes
  // on average (a wakeup's burst of replies must fit a socket's receive buffer), and than `wanted`.
  static constexpr double kMaxProbesPerSlot = 64;
  static std::int64_t slot_for(std::int64_t wanted_ns, double max_rate_per_s, double total_rate_per_s = 0) noexcept {
    std::int64_t slot = wanted_ns > 0 ? wanted_ns : kDefaultSlotNs;
    if (max_rate_per_s > 0) {
      slot = std::min<std::int64_t>(slot, static_cast<std::int64_t>(1e9 / max_rate_per_s / 4.0));
    }
    if (total_rate_per_s > 0) {
      slot = std::min<std::int64_t>(slot, static_cast<std::int64_t>(1e9 * kMaxProbesPerSlot / total_rate_per_s));
    }
    return std::max(slot, kMinSlotNs);
  }

  // This grid with its slot lowered for `targets` (anything with a rate_per_s), as slot_for().
  template <typename Targets>
  [[nodiscard]] SlotGrid for_targets(const Targets& targets) const noexcept {
    double max_rate = 0;
    double total_rate = 0;
    for (const auto& t : targets) {
      max_rate = std::max(max_rate, t.rate_per_s);
      total_rate += t.rate_per_s;
    }
    SlotGrid grid = *this;
    grid.slot_ns = slot_for(slot_ns, max_rate, total_rate);
    return grid;
  }

  // The last boundary at or before t.
  [[nodiscard]] std::int64_t boundary_at_or_before(std::int64_t t) const noexcept {
    const std::int64_t d = t - phase_ns;
    const std::int64_t k = d >= 0 ? d / slot_ns : -((-d + slot_ns - 1) / slot_ns);
    return phase_ns + k * slot_ns;
  }

  // The first boundary at or after t.
  [[nodiscard]] std::int64_t boundary_at_or_after(std::int64_t t) const noexcept {
    const std::int64_t d = t - phase_ns;
    const std::int64_t k = d >= 0 ? (d + slot_ns - 1) / slot_ns : -(-d / slot_ns);
    return phase_ns + k * slot_ns;
  }
};

// One CLOCK_MONOTONIC deadline per target, in the order the targets were added. Each target
// starts at a random phase within its first interval and every gap is the mean interval times
// uniform [1 - jitter, 1 + jitter). Deadlines advance from the previous deadline, not from when
// the prober woke, so waking on the grid delays a probe by less than a slot without lowering
// its rate; a target more than an interval behind (suspend, a starved thread) resumes from now
// instead of firing the missed probes back to back.
//
// A probe due at d is sent at the first grid boundary at or after d: the wheel files a target
// under that boundary's slot number, next_wake() is the first boundary with a target filed, and
// run_due() serves every slot whose boundary has passed. The wheel has kWheelSlots buckets of
// doubly linked targets (indices, no allocation after add()) and a bitmap of the non-empty
// ones; a deadline beyond one turn of the wheel waits in its bucket for its turn (a target
// probed less often than once per turn costs a wakeup per turn at most).
class ProbeSchedule {
 public:
  static constexpr std::size_t kWheelSlots = 512;

  // Forgets every target; `seed` 0 is as good as any other.
  void reset(double jitter, std::uint64_t seed, SlotGrid grid = {}) {
    jitter_ = jitter;
    rng_state_ = seed;
    grid_ = grid;
    grid_.slot_ns = std::max(grid_.slot_ns, SlotGrid::kMinSlotNs);
    grid_.phase_ns = ((grid_.phase_ns % grid_.slot_ns) + grid_.slot_ns) % grid_.slot_ns;
    entries_.clear();
    heads_.fill(kNone);
    occupied_.fill(0);
    cursor_ = kUnset;
    filed_ = 0;
  }
  void reserve(std::size_t targets) { entries_.reserve(targets); }
  [[nodiscard]] const SlotGrid& grid() const noexcept { return grid_; }

  // A target probed rate_per_s times a second on average (> 0); returns its index.
  std::size_t add(double rate_per_s, std::int64_t now_ns) {
    Entry e;
    e.interval_ns = std::max<std::int64_t>(1, std::llround(1e9 / rate_per_s));
    e.next_due_ns = now_ns + static_cast<std::int64_t>(static_cast<double>(e.interval_ns) * uniform01(rng_state_));
    entries_.push_back(e);
    const auto i = static_cast<std::uint32_t>(entries_.size() - 1);
    if (cursor_ == kUnset) cursor_ = slot_at_or_after(now_ns);
    file(i);
    return i;
  }

  // Sends nothing more to target i (a probe count reached).
  void finish(std::size_t i) noexcept {
    entries_[i].active = false;
    unfile(static_cast<std::uint32_t>(i));
  }

  // Pauses target i (its name has no address) or resumes it; a resumed target starts again at a
  // random phase within one interval from now_ns, as a new one would.
  void set_active(std::size_t i, bool active, std::int64_t now_ns) noexcept {
    Entry& e = entries_[i];
    const auto index = static_cast<std::uint32_t>(i);
    if (active && !e.active) {
      e.next_due_ns = now_ns + static_cast<std::int64_t>(static_cast<double>(e.interval_ns) * uniform01(rng_state_));
      e.active = true;
      file(index);
    } else if (!active && e.active) {
      e.active = false;
      unfile(index);
    }
  }
  [[nodiscard]] bool active(std::size_t i) const noexcept { return entries_[i].active; }

  // The earliest deadline of a target still active; INT64_MAX when there is none. A scan: for
  // tests and diagnostics, not the send path.
  [[nodiscard]] std::int64_t earliest() const noexcept {
    std::int64_t earliest = std::numeric_limits<std::int64_t>::max();
    for (const Entry& e : entries_) {
      if (e.active) earliest = std::min(earliest, e.next_due_ns);
    }
    return earliest;
  }

  // The grid boundary at which run_due() has something to look at next (at or after the
  // earliest deadline); INT64_MAX when no target is active.
  [[nodiscard]] std::int64_t next_wake() const noexcept {
    if (filed_ == 0) {
      return std::numeric_limits<std::int64_t>::max();
    }
    // Occupied buckets in time order from the cursor, once round: the first one holding a
    // target filed for this turn is the answer; one holding only later turns' targets gives a
    // candidate that a later bucket may still beat.
    std::int64_t best = std::numeric_limits<std::int64_t>::max();
    const std::size_t start = static_cast<std::size_t>(cursor_) & kMask;
    std::size_t step = 0;
    while (step < kWheelSlots) {
      const std::size_t b = (start + step) & kMask;
      const std::uint64_t word = occupied_[b / 64] >> (b % 64);
      if (word == 0) {
        step += 64 - b % 64;
        continue;
      }
      step += static_cast<std::size_t>(std::countr_zero(word));
      if (step >= kWheelSlots) break;
      const std::int64_t this_turn = cursor_ + static_cast<std::int64_t>(step);
      if (this_turn >= best) break;
      for (std::uint32_t i = heads_[static_cast<std::size_t>(this_turn) & kMask]; i != kNone; i = entries_[i].next) {
        best = std::min(best, entries_[i].slot);
      }
      if (best == this_turn) break;
      ++step;
    }
    return boundary(best);
  }

  // Calls send(i) for every active target due by now_ns (filed under a boundary at or before
  // it), slot by slot in time order, and moves its deadline on. Returns how many were sent.
  template <typename Send>
  std::size_t run_due(std::int64_t now_ns, Send&& send) {
    if (cursor_ == kUnset || filed_ == 0) {
      if (cursor_ == kUnset) cursor_ = slot_at_or_after(now_ns);
      return 0;
    }
    const std::int64_t last = slot_at_or_before(now_ns);
    if (last < cursor_) {
      return 0;
    }
    std::size_t sent = 0;
    // One turn visits every bucket, and every target due by `last` is in one of them.
    const std::int64_t end = std::min(last, cursor_ + static_cast<std::int64_t>(kWheelSlots) - 1);
    for (std::int64_t s = cursor_; s <= end; ++s) {
      const std::size_t bucket = static_cast<std::size_t>(s) & kMask;
      std::uint32_t i = heads_[bucket];
      while (i != kNone) {
        const std::uint32_t next = entries_[i].next;
        Entry& e = entries_[i];
        if (e.slot <= last) {
          unfile(i);
          send(static_cast<std::size_t>(i));
          ++sent;
          // send() may have finished the target (a probe count reached).
          if (e.active) {
            e.next_due_ns += jittered_interval(e.interval_ns, jitter_, rng_state_);
            if (e.next_due_ns < now_ns - e.interval_ns) {
              e.next_due_ns = now_ns + jittered_interval(e.interval_ns, jitter_, rng_state_);
            }
            file(i, last + 1);
          }
        }
        i = next;
      }
    }
    cursor_ = last + 1;
    return sent;
  }

  [[nodiscard]] std::int64_t interval_ns(std::size_t i) const noexcept { return entries_[i].interval_ns; }
  [[nodiscard]] std::int64_t next_due_ns(std::size_t i) const noexcept { return entries_[i].next_due_ns; }
  // The grid boundary target i's next probe goes out at.
  [[nodiscard]] std::int64_t next_send_ns(std::size_t i) const noexcept { return boundary(entries_[i].slot); }

 private:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::int64_t kUnset = std::numeric_limits<std::int64_t>::min();
  static constexpr std::size_t kMask = kWheelSlots - 1;
  static_assert(std::has_single_bit(kWheelSlots) && kWheelSlots % 64 == 0);

  struct Entry {
    std::int64_t interval_ns = 0;
    std::int64_t next_due_ns = 0;
    std::int64_t slot = 0;  // the grid slot it is filed under
    std::uint32_t prev = kNone;
    std::uint32_t next = kNone;
    bool active = true;
    bool filed = false;
  };

  // Slot numbers count boundaries: slot k is the boundary phase + k * slot_ns.
  [[nodiscard]] std::int64_t boundary(std::int64_t slot) const noexcept { return grid_.phase_ns + slot * grid_.slot_ns; }
  [[nodiscard]] std::int64_t slot_at_or_before(std::int64_t t) const noexcept {
    const std::int64_t d = t - grid_.phase_ns;
    return d >= 0 ? d / grid_.slot_ns : -((-d + grid_.slot_ns - 1) / grid_.slot_ns);
  }
  [[nodiscard]] std::int64_t slot_at_or_after(std::int64_t t) const noexcept {
    const std::int64_t s = slot_at_or_before(t);
    return boundary(s) == t ? s : s + 1;
  }

  // Files an active target under the slot of its deadline, never before `earliest_slot` (a
  // slot already served) or the cursor.
  void file(std::uint32_t i, std::int64_t earliest_slot = std::numeric_limits<std::int64_t>::min()) noexcept {
    Entry& e = entries_[i];
    if (e.filed) unfile(i);
    e.slot = std::max({slot_at_or_after(e.next_due_ns), earliest_slot, cursor_});
    const std::size_t bucket = static_cast<std::size_t>(e.slot) & kMask;
    e.prev = kNone;
    e.next = heads_[bucket];
    if (e.next != kNone) entries_[e.next].prev = i;
    heads_[bucket] = i;
    occupied_[bucket / 64] |= std::uint64_t{1} << (bucket % 64);
    e.filed = true;
    ++filed_;
  }

  void unfile(std::uint32_t i) noexcept {
    Entry& e = entries_[i];
    if (!e.filed) return;
    const std::size_t bucket = static_cast<std::size_t>(e.slot) & kMask;
    if (e.prev != kNone) {
      entries_[e.prev].next = e.next;
    } else {
      heads_[bucket] = e.next;
    }
    if (e.next != kNone) entries_[e.next].prev = e.prev;
    if (heads_[bucket] == kNone) occupied_[bucket / 64] &= ~(std::uint64_t{1} << (bucket % 64));
    e.prev = e.next = kNone;
    e.filed = false;
    --filed_;
  }

  std::vector<Entry> entries_;
  std::array<std::uint32_t, kWheelSlots> heads_{};
  std::array<std::uint64_t, kWheelSlots / 64> occupied_{};
  std::int64_t cursor_ = kUnset;  // the first slot run_due() has not served yet
  std::size_t filed_ = 0;
  SlotGrid grid_;
  double jitter_ = 0.0;
  std::uint64_t rng_state_ = 0;
};

}  // namespace vantage::agent::probes
