// ProbeSchedule's timing wheel on simulated time: every probe goes out at the first slot
// boundary at or after its deadline, rates hold, long intervals survive turns of the wheel,
// pauses and catch-up behave; and ReplyWait's read-only wakeups back off and stop.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "agent/probes/probe_schedule.hpp"
#include "agent/probes/schedule_timer.hpp"

namespace {

using vantage::agent::probes::ProbeSchedule;
using vantage::agent::probes::ReplyWait;
using vantage::agent::probes::SlotGrid;

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

struct Sim {
  ProbeSchedule schedule;
  std::vector<std::vector<std::int64_t>> sends;  // per target: when it was sent

  // Wakes only when next_wake() says, as the timer does; checks each send against its deadline.
  void run_until(std::int64_t end) {
    for (;;) {
      const std::int64_t wake = schedule.next_wake();
      if (wake == kNever || wake > end) return;
      // A wakeup is a boundary of the grid.
      const SlotGrid& g = schedule.grid();
      REQUIRE(((wake - g.phase_ns) % g.slot_ns + g.slot_ns) % g.slot_ns == 0);
      // Never later than the earliest deadline's boundary (nothing due is skipped).
      REQUIRE(wake <= g.boundary_at_or_after(schedule.earliest()));
      schedule.run_due(wake, [&](std::size_t i) {
        const std::int64_t due = schedule.next_due_ns(i);
        CHECK(due <= wake);
        CHECK(wake - due < g.slot_ns);
        sends[i].push_back(wake);
      });
    }
  }
};

}  // namespace

TEST_CASE("probe schedule: every probe at the first boundary after its deadline, rates kept") {
  Sim sim;
  const SlotGrid grid{.slot_ns = 10 * kMs, .phase_ns = 3 * kMs};
  sim.schedule.reset(0.5, 42, grid);
  const std::int64_t start = 1000 * kSecond + 7;
  const std::vector<double> rates = {10, 10, 1, 0.5, 2.5, 0.05, 20};  // 0.05/s: 20 s, four turns of the wheel
  for (double r : rates) sim.schedule.add(r, start);
  sim.sends.resize(rates.size());
  sim.run_until(start + 200 * kSecond);
  for (std::size_t i = 0; i < rates.size(); ++i) {
    const double expected = rates[i] * 200.0;
    // Jittered gaps of uniform [0.5, 1.5) intervals: the count stays close to rate * time.
    CHECK(static_cast<double>(sim.sends[i].size()) >= expected * 0.9 - 2);
    CHECK(static_cast<double>(sim.sends[i].size()) <= expected * 1.1 + 2);
  }
}

TEST_CASE("probe schedule: many targets share wakeups") {
  Sim sim;
  const SlotGrid grid{.slot_ns = 10 * kMs, .phase_ns = 0};
  sim.schedule.reset(0.5, 7, grid);
  const std::int64_t start = 5 * kSecond;
  for (int i = 0; i < 100; ++i) sim.schedule.add(10, start);
  sim.sends.resize(100);
  std::size_t wakes = 0;
  std::int64_t t = start;
  while (t < start + 10 * kSecond) {
    t = sim.schedule.next_wake();
    sim.schedule.run_due(t, [&](std::size_t i) { sim.sends[i].push_back(t); });
    ++wakes;
  }
  std::size_t total = 0;
  for (const auto& s : sim.sends) total += s.size();
  CHECK(total >= 9000);
  // 1000 probes a second on a 10 ms grid: at most one wakeup per slot, 100 a second.
  CHECK(wakes <= 1002);
}

TEST_CASE("probe schedule: pause, resume and finish") {
  Sim sim;
  sim.schedule.reset(0.5, 9, SlotGrid{.slot_ns = 5 * kMs, .phase_ns = 1});
  const std::int64_t start = 100 * kSecond;
  sim.schedule.add(4, start);
  sim.schedule.add(4, start);
  sim.sends.resize(2);
  sim.schedule.set_active(1, false, start);
  sim.run_until(start + 10 * kSecond);
  CHECK(sim.sends[1].empty());
  CHECK(sim.sends[0].size() >= 30);
  sim.schedule.set_active(1, true, start + 10 * kSecond);
  sim.schedule.finish(0);
  const std::size_t before = sim.sends[0].size();
  sim.run_until(start + 20 * kSecond);
  CHECK(sim.sends[0].size() == before);
  CHECK(sim.sends[1].size() >= 30);
  for (std::int64_t t : sim.sends[1]) CHECK(t >= start + 10 * kSecond);
  sim.schedule.finish(1);
  CHECK(sim.schedule.next_wake() == kNever);
}

TEST_CASE("probe schedule: a late wakeup sends each late target once, then resumes from now") {
  ProbeSchedule schedule;
  schedule.reset(0.5, 3, SlotGrid{.slot_ns = 10 * kMs, .phase_ns = 0});
  const std::int64_t start = 10 * kSecond;
  for (int i = 0; i < 3; ++i) schedule.add(10, start);
  // A stall of a minute (a suspended VM): twelve turns of the wheel pass unserved.
  std::vector<int> sent(3, 0);
  schedule.run_due(start + 60 * kSecond, [&](std::size_t i) { ++sent[i]; });
  for (int n : sent) CHECK(n == 1);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(schedule.next_due_ns(i) > start + 60 * kSecond);
    CHECK(schedule.next_due_ns(i) <= start + 60 * kSecond + 150 * kMs);
  }
}

TEST_CASE("slot grid: the slot is lowered for fast targets and boundaries round up") {
  CHECK(SlotGrid::slot_for(10 * kMs, 10) == 10 * kMs);
  CHECK(SlotGrid::slot_for(10 * kMs, 100) == 2'500'000);
  CHECK(SlotGrid::slot_for(0, 1) == SlotGrid::kDefaultSlotNs);
  CHECK(SlotGrid::slot_for(10 * kMs, 1e9) == SlotGrid::kMinSlotNs);
  // 1000 targets x 10/s: a slot holds 64 probes on average, so a wakeup's replies fit a socket.
  CHECK(SlotGrid::slot_for(20 * kMs, 10, 10'000) == 6'400'000);
  CHECK(SlotGrid::slot_for(20 * kMs, 10, 1'000) == 20 * kMs);
  const SlotGrid g{.slot_ns = 10, .phase_ns = 3};
  CHECK(g.boundary_at_or_after(3) == 3);
  CHECK(g.boundary_at_or_after(4) == 13);
  CHECK(g.boundary_at_or_after(-6) == 3);
  CHECK(g.boundary_at_or_after(-8) == -7);
  CHECK(g.boundary_at_or_before(3) == 3);
  CHECK(g.boundary_at_or_before(12) == 3);
  CHECK(g.boundary_at_or_before(-6) == -7);
}

TEST_CASE("reply wait: read-only wakeups back off and stop at the timeout") {
  ReplyWait wait;
  wait.resize(2);
  const std::int64_t slot = 10 * kMs;
  std::int64_t now = kSecond;
  CHECK(wait.next_read(now, 0, 0, slot) == kNever);
  wait.sent(0, 5, now, kSecond);
  CHECK(wait.next_read(now, 1, 0, slot) == now + slot);
  // Nothing read: the gaps double up to the cap.
  std::int64_t gap = 0;
  for (int i = 0; i < 10; ++i) {
    const std::int64_t next = wait.next_read(now, 0, 0, slot);
    REQUIRE(next != kNever);
    gap = next - now;
    now = next;
  }
  CHECK(gap == ReplyWait::kMaxReadDelayNs);
  // Past the timeout (2 s) the target is given up, and read-only wakeups stop.
  for (int i = 0; i < 100; ++i) {
    const std::int64_t next = wait.next_read(now, 0, 0, slot);
    if (next == kNever) break;
    now = next;
  }
  CHECK(wait.waiting() == 0);
  CHECK(now >= 2 * kSecond);
  CHECK(now <= 2 * kSecond + ReplyWait::kMaxReadDelayNs);
  // An answer to the latest probe ends the wait; one to an older probe does not.
  wait.sent(1, 7, now, kSecond);
  wait.answered(1, 6);
  CHECK(wait.waiting() == 1);
  wait.answered(1, 7);
  CHECK(wait.waiting() == 0);
  CHECK(wait.next_read(now, 0, 1, slot) == kNever);
  // However long the slot, a reply is read well within the second a kernel stamp is trusted.
  wait.sent(0, 9, now, 10 * kSecond);
  CHECK(wait.next_read(now, 1, 0, 100 * kMs) == now + ReplyWait::kMaxReadDelayNs);
}
