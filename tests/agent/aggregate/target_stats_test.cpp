// Tests for TargetStats: exact counts on synthetic event streams with injected loss, lateness,
// duplication, reordering, reflector restarts and sequence wrap; RTT and IPDV statistics
// against hand and exact computations; and the wire LatencySummary it builds.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

#include "agent/aggregate/target_stats.hpp"
#include "tests/agent/aggregate/allocation_counter.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace {

using vantage::agent::LatencyHistogram;
using namespace vantage::agent::aggregate;
using vantage::agent::probes::ProbeEvent;
using vantage::agent::probes::ProbeEventKind;
using vantage::agent::probes::ProbeProtocol;
namespace wire = vantage::wire;

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kTimeout = 100 * kMs;
constexpr std::uint64_t kMaxSeq = std::numeric_limits<std::uint64_t>::max();

TargetStatsConfig config(ProbeProtocol protocol = ProbeProtocol::kUdpEcho, std::uint32_t window = 64) {
  TargetStatsConfig c;
  c.protocol = protocol;
  c.timeout_ns = kTimeout;
  c.window = window;
  return c;
}

ProbeEvent sent(std::uint64_t seq, std::int64_t send_ns) {
  ProbeEvent e;
  e.kind = ProbeEventKind::kSent;
  e.seq = seq;
  e.send_ns = send_ns;
  return e;
}

ProbeEvent reply(std::uint64_t seq, std::int64_t send_ns, std::int64_t raw_rtt_ns) {
  ProbeEvent e;
  e.kind = ProbeEventKind::kReply;
  e.seq = seq;
  e.send_ns = send_ns;
  e.receive_ns = send_ns + raw_rtt_ns;
  return e;
}

ProbeEvent echo(std::uint64_t seq, std::int64_t send_ns, std::int64_t raw_rtt_ns, std::uint64_t boot,
                std::uint32_t session, std::uint32_t rx) {
  ProbeEvent e = reply(seq, send_ns, raw_rtt_ns);
  e.reflector_boot = boot;
  e.session_id = session;
  e.session_rx = rx;
  return e;
}

ProbeEvent send_error(std::uint64_t seq) {
  ProbeEvent e;
  e.kind = ProbeEventKind::kSendError;
  e.seq = seq;
  return e;
}

// The simulated reflector: counts the probes it accepts per session, as the real one does.
struct Reflector {
  std::uint64_t boot = 0xB007;
  std::uint32_t session = 7;
  std::uint32_t rx = 0;
};

void check_direction_bound(const IntervalSummary& s) { CHECK(s.lost_outbound + s.lost_inbound <= s.lost); }

}  // namespace

TEST_CASE("a clean stream: every probe answered, nothing else counted") {
  TargetStats stats(config(), 0);
  for (std::uint64_t i = 0; i < 50; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    stats.on_event(echo(i, t, 2 * kMs, 1, 1, static_cast<std::uint32_t>(i + 1)));
  }
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  CHECK(s.start_ns == 0);
  CHECK(s.end_ns == 1000 * kMs);
  CHECK(s.sent == 50);
  CHECK(s.received == 50);
  CHECK(s.lost + s.late + s.reordered + s.duplicates + s.unexpected + s.invalid + s.send_errors == 0);
  CHECK(s.lost_outbound + s.lost_inbound + s.reflector_restarts + s.session_resets == 0);
  CHECK(s.min_ns == static_cast<std::uint64_t>(2 * kMs));
  CHECK(s.max_ns == static_cast<std::uint64_t>(2 * kMs));
  CHECK(s.ipdv_count == 49);
  CHECK(s.jitter_mean_ns == 0.0);
  CHECK(stats.outstanding() == 0);
}

TEST_CASE("loss, late, duplicates and reordering are counted exactly") {
  // 20 probes 10 ms apart. Replies: 3 and 7 never come, 10 comes 150 ms after its send
  // (past the 100 ms timeout), 12 arrives three times, 16 overtakes 15.
  TargetStats stats(config(ProbeProtocol::kIcmpEcho), 0);
  const auto t = [](std::uint64_t i) { return static_cast<std::int64_t>(i) * 10 * kMs; };
  for (std::uint64_t i = 0; i < 20; ++i) {
    stats.on_event(sent(i, t(i)));
    if (i == 3 || i == 7 || i == 10 || i == 15) {
      continue;
    }
    if (i == 16) {
      stats.on_event(reply(16, t(16), 1 * kMs));
      stats.on_event(reply(15, t(15), 12 * kMs));
      continue;
    }
    stats.on_event(reply(i, t(i), 1 * kMs));
    if (i == 12) {
      stats.on_event(reply(12, t(12), 1 * kMs));
      stats.on_event(reply(12, t(12), 2 * kMs));
    }
  }
  stats.on_event(reply(10, t(10), 150 * kMs));
  stats.on_event(reply(10, t(10), 151 * kMs));  // a copy of a late reply is a duplicate
  const IntervalSummary s = stats.close_interval(t(20) + kTimeout + 1);
  CHECK(s.sent == 20);
  CHECK(s.received == 17);
  CHECK(s.lost == 3);  // 3, 7, and 10 (lost counts the late one too)
  CHECK(s.late == 1);
  CHECK(s.duplicates == 3);
  CHECK(s.reordered == 1);
  CHECK(s.max_ns == static_cast<std::uint64_t>(12 * kMs));  // the reordered reply is an RTT
  CHECK(s.lost_outbound + s.lost_inbound == 0);             // ICMP cannot tell
  CHECK(s.unexpected + s.invalid == 0);
}

TEST_CASE("late replies count in the interval they arrive, lost in the one the timeout is noticed") {
  TargetStats stats(config(), 0);
  stats.on_event(sent(0, 0));
  stats.on_event(sent(1, 10 * kMs));
  stats.on_event(echo(1, 10 * kMs, 1 * kMs, 1, 1, 2));
  const IntervalSummary first = stats.close_interval(200 * kMs);
  CHECK(first.sent == 2);
  CHECK(first.received == 1);
  CHECK(first.lost == 1);
  CHECK(first.late == 0);

  stats.on_event(echo(0, 0, 250 * kMs, 1, 1, 1));
  const IntervalSummary second = stats.close_interval(400 * kMs);
  CHECK(second.sent == 0);
  CHECK(second.lost == 0);
  CHECK(second.late == 1);
  CHECK(second.received == 0);
  CHECK(second.rtt.count() == 0);  // late replies are never RTT samples
}

TEST_CASE("an in-time reply read after expire() in the same interval is taken back from lost") {
  TargetStats stats(config(), 0);
  stats.on_event(sent(0, 0));
  stats.expire(kTimeout + 5 * kMs);  // the reply is still in the ring
  stats.on_event(echo(0, 0, kTimeout - 1, 1, 1, 1));
  const IntervalSummary s = stats.close_interval(kTimeout + 10 * kMs);
  CHECK(s.lost == 0);
  CHECK(s.late == 0);
  CHECK(s.received == 1);
  CHECK(s.max_ns == static_cast<std::uint64_t>(kTimeout - 1));
}

TEST_CASE("a probe answered in the next interval: sent in the first, received in the second") {
  TargetStats stats(config(), 0);
  stats.on_event(sent(0, 90 * kMs));
  const IntervalSummary first = stats.close_interval(100 * kMs);
  CHECK(first.sent == 1);
  CHECK(first.received == 0);
  CHECK(first.lost == 0);
  CHECK(stats.outstanding() == 1);

  stats.on_event(echo(0, 90 * kMs, 30 * kMs, 1, 1, 1));
  const IntervalSummary second = stats.close_interval(200 * kMs);
  CHECK(second.start_ns == 100 * kMs);
  CHECK(second.sent == 0);
  CHECK(second.received == 1);
  CHECK(second.lost == 0);
  CHECK(second.p50_ns == static_cast<std::uint64_t>(30 * kMs));
  CHECK(stats.outstanding() == 0);
}

TEST_CASE("loss direction: 3 probes the reflector never saw, 2 replies the network dropped") {
  const std::set<std::uint64_t> outbound_lost{4, 5, 11};
  const std::set<std::uint64_t> inbound_lost{8, 14};
  TargetStats stats(config(), 0);
  Reflector reflector;
  for (std::uint64_t i = 0; i < 20; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    if (outbound_lost.count(i) != 0) {
      continue;
    }
    ++reflector.rx;
    if (inbound_lost.count(i) == 0) {
      stats.on_event(echo(i, t, 1 * kMs, reflector.boot, reflector.session, reflector.rx));
    }
  }
  const IntervalSummary s = stats.close_interval(400 * kMs);
  CHECK(s.sent == 20);
  CHECK(s.received == 15);
  CHECK(s.lost == 5);
  CHECK(s.lost_outbound == 3);
  CHECK(s.lost_inbound == 2);
  CHECK(s.reflector_restarts == 0);
}

TEST_CASE("loss direction: losses after the last reply stay unattributed, never over-counted") {
  TargetStats stats(config(), 0);
  stats.on_event(sent(0, 0));
  stats.on_event(echo(0, 0, 1 * kMs, 1, 1, 1));
  stats.on_event(sent(1, 10 * kMs));  // never reaches the reflector
  stats.on_event(sent(2, 20 * kMs));

  SUBCASE("the next reply arrives in the interval in which the loss was counted") {
    stats.expire(115 * kMs);
    stats.on_event(echo(2, 20 * kMs, 99 * kMs, 1, 1, 2));
    const IntervalSummary s = stats.close_interval(200 * kMs);
    CHECK(s.lost == 1);
    CHECK(s.lost_outbound == 1);
    CHECK(s.lost_inbound == 0);
  }
  SUBCASE("the interval closes first: unknown there, and not booked in the next") {
    const IntervalSummary first = stats.close_interval(115 * kMs);
    CHECK(first.lost == 1);
    CHECK(first.lost_outbound + first.lost_inbound == 0);
    stats.on_event(echo(2, 20 * kMs, 99 * kMs, 1, 1, 2));
    const IntervalSummary second = stats.close_interval(200 * kMs);
    CHECK(second.lost == 0);
    CHECK(second.lost_outbound + second.lost_inbound == 0);
    CHECK(second.received == 1);
  }
}

TEST_CASE("loss direction stays exact when a reply is reordered past the span's end") {
  // Probes 0..5; 2 never reaches the reflector, 3's reply is lost, 1's reply arrives after 4's.
  TargetStats stats(config(), 0);
  const auto t = [](std::uint64_t i) { return static_cast<std::int64_t>(i) * 10 * kMs; };
  for (std::uint64_t i = 0; i < 6; ++i) {
    stats.on_event(sent(i, t(i)));
  }
  stats.on_event(echo(0, t(0), 60 * kMs, 1, 1, 1));
  SUBCASE("the reordered reply was counted by the reflector before the span's end") {
    // The reflector saw 0, 1, 3, 4, 5 in that order.
    stats.on_event(echo(4, t(4), 30 * kMs, 1, 1, 4));
    stats.on_event(echo(1, t(1), 70 * kMs, 1, 1, 2));
    stats.on_event(echo(5, t(5), 30 * kMs, 1, 1, 5));
  }
  SUBCASE("the reordered probe reached the reflector after the span's end") {
    // The reflector saw 0, 3, 4, 1, 5: 1 was reordered on the way out.
    stats.on_event(echo(4, t(4), 30 * kMs, 1, 1, 3));
    stats.on_event(echo(1, t(1), 70 * kMs, 1, 1, 4));
    stats.on_event(echo(5, t(5), 30 * kMs, 1, 1, 5));
  }
  const IntervalSummary s = stats.close_interval(t(6) + kTimeout + 1);
  CHECK(s.received == 4);
  CHECK(s.reordered == 1);
  CHECK(s.lost == 2);
  CHECK(s.lost_outbound == 1);
  CHECK(s.lost_inbound == 1);
}

TEST_CASE("a reflector restart mid-interval restarts the baseline and produces no garbage") {
  TargetStats stats(config(), 0);
  const auto t = [](std::uint64_t i) { return static_cast<std::int64_t>(i) * 10 * kMs; };
  Reflector before{0xAAAA, 7, 0};
  Reflector after{0xBBBB, 1, 0};
  for (std::uint64_t i = 0; i < 20; ++i) {
    stats.on_event(sent(i, t(i)));
    if (i < 10) {
      ++before.rx;
      if (i != 9) {
        stats.on_event(echo(i, t(i), 1 * kMs, before.boot, before.session, before.rx));
      }
    } else if (i >= 12) {  // 10 and 11 went to a reflector that was restarting
      ++after.rx;
      if (i != 14) {  // 14's reply is lost on the way back
        stats.on_event(echo(i, t(i), 1 * kMs, after.boot, after.session, after.rx));
      }
      if (i == 12) {  // the old instance's last reply shows up after the new one's first
        stats.on_event(echo(9, t(9), 31 * kMs, before.boot, before.session, 10));
      }
    }
  }
  const IntervalSummary s = stats.close_interval(t(20) + kTimeout + 1);
  CHECK(s.reflector_restarts == 1);
  CHECK(s.session_resets == 0);
  CHECK(s.received == 17);
  CHECK(s.reordered == 1);
  CHECK(s.lost == 3);
  CHECK(s.lost_inbound == 1);   // 14, after the restart
  CHECK(s.lost_outbound == 0);  // 10 and 11 straddle the restart: unknown
  check_direction_bound(s);

  SUBCASE("a new session from the same instance is a session reset") {
    stats.on_event(sent(20, t(20)));
    stats.on_event(echo(20, t(20), 1 * kMs, after.boot, after.session + 1, 1));
    const IntervalSummary next = stats.close_interval(t(30));
    CHECK(next.session_resets == 1);
    CHECK(next.reflector_restarts == 0);
  }
  SUBCASE("counters that go backwards within a session explain nothing") {
    stats.on_event(sent(20, t(20)));
    stats.on_event(sent(21, t(21)));
    stats.on_event(echo(21, t(21), 1 * kMs, after.boot, after.session, 3));
    const IntervalSummary next = stats.close_interval(t(21) + kTimeout + 1);
    CHECK(next.lost == 1);
    CHECK(next.lost_outbound + next.lost_inbound == 0);
  }
}

TEST_CASE("sequence numbers wrap from 2^64 - 1 to 0") {
  // 20 probes from 2^64 - 10 through 9, a 16-slot window so slots are reused across the
  // wrap. 2^64 - 1 never reaches the reflector, 1's reply is lost, 2^64 - 2's reply arrives
  // after 0's.
  TargetStats stats(config(ProbeProtocol::kUdpEcho, 16), 0);
  CHECK(stats.window() == 16);
  const std::uint64_t first = kMaxSeq - 9;
  Reflector reflector;
  std::vector<ProbeEvent> held;
  for (std::uint64_t n = 0; n < 20; ++n) {
    const std::uint64_t seq = first + n;
    const std::int64_t t = static_cast<std::int64_t>(n) * 10 * kMs;
    stats.on_event(sent(seq, t));
    if (seq == kMaxSeq) {
      continue;
    }
    ++reflector.rx;
    const ProbeEvent answer = echo(seq, t, 1 * kMs, reflector.boot, reflector.session, reflector.rx);
    if (seq == 1) {
      continue;
    }
    if (seq == kMaxSeq - 1) {
      held.push_back(answer);
      continue;
    }
    stats.on_event(answer);
    if (seq == 0) {
      stats.on_event(held.front());
    }
  }
  const IntervalSummary s = stats.close_interval(20 * 10 * kMs + kTimeout + 1);
  CHECK(s.sent == 20);
  CHECK(s.received == 18);
  CHECK(s.lost == 2);
  CHECK(s.reordered == 1);
  CHECK(s.lost_outbound == 1);
  CHECK(s.lost_inbound == 1);
  CHECK(s.unexpected + s.invalid + s.duplicates == 0);
}

TEST_CASE("percentiles, mean and stddev match the exact values of the sorted RTTs") {
  TargetStats stats(config(ProbeProtocol::kTcpConnect, 16), 0);
  std::vector<std::uint64_t> rtts;
  std::uint64_t x = 0x9E3779B97F4A7C15ull;  // xorshift: the same stream on every platform
  for (std::uint64_t i = 0; i < 5000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // A body around 2-3 ms and a tail up to ~80 ms, like a real path.
    const std::uint64_t body = 2'000'000 + x % 1'000'000;
    const std::uint64_t rtt = (x >> 40) % 100 == 0 ? body + (x >> 20) % 80'000'000 : body;
    rtts.push_back(rtt);
    const std::int64_t t = static_cast<std::int64_t>(i) * kMs;
    stats.on_event(sent(i, t));
    stats.on_event(reply(i, t, static_cast<std::int64_t>(rtt)));
  }
  const IntervalSummary s = stats.close_interval(6000 * kMs);
  REQUIRE(s.received == rtts.size());
  std::sort(rtts.begin(), rtts.end());
  const auto exact = [&](double p) {
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(rtts.size()) / 100.0));
    return static_cast<double>(rtts[std::max<std::size_t>(rank, 1) - 1]);
  };
  CHECK(static_cast<double>(s.p50_ns) == doctest::Approx(exact(50.0)).epsilon(0.01));
  CHECK(static_cast<double>(s.p90_ns) == doctest::Approx(exact(90.0)).epsilon(0.01));
  CHECK(static_cast<double>(s.p99_ns) == doctest::Approx(exact(99.0)).epsilon(0.01));
  CHECK(static_cast<double>(s.p999_ns) == doctest::Approx(exact(99.9)).epsilon(0.01));
  CHECK(s.min_ns == rtts.front());
  CHECK(s.max_ns == rtts.back());
  double sum = 0.0;
  for (const std::uint64_t v : rtts) {
    sum += static_cast<double>(v);
  }
  const double mean = sum / static_cast<double>(rtts.size());
  double sq = 0.0;
  for (const std::uint64_t v : rtts) {
    sq += (static_cast<double>(v) - mean) * (static_cast<double>(v) - mean);
  }
  CHECK(s.mean_ns == doctest::Approx(mean).epsilon(1e-9));
  CHECK(s.stddev_ns == doctest::Approx(std::sqrt(sq / static_cast<double>(rtts.size()))).epsilon(1e-6));
  CHECK(s.timestamp_source == TimestampSource::kUserspace);
}

TEST_CASE("IPDV jitter matches a hand computation, skipping lost probes, in arrival order") {
  TargetStats stats(config(), 0);
  // RTTs in ms by seq; seq 3 is lost, the dwell is subtracted.
  const std::int64_t rtt_ms[] = {10, 12, 11, 0, 15, 15, 9};
  for (std::uint64_t i = 0; i < 7; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 20 * kMs;
    stats.on_event(sent(i, t));
    if (i != 3) {
      ProbeEvent e = echo(i, t, (rtt_ms[i] + 3) * kMs, 1, 1, static_cast<std::uint32_t>(i + 1));
      e.reflector_dwell_ns = 3 * kMs;
      e.kernel_rx_timestamp = true;
      stats.on_event(e);
    }
  }
  const IntervalSummary s = stats.close_interval(500 * kMs);
  // |12-10| + |11-12| + |15-11| + |15-15| + |9-15| = 2 + 1 + 4 + 0 + 6 = 13 over 5 pairs.
  CHECK(s.ipdv_count == 5);
  CHECK(s.jitter_mean_ns == doctest::Approx(13.0 / 5.0 * kMs));
  CHECK(s.jitter_p99_ns == static_cast<std::uint64_t>(6 * kMs));
  CHECK(s.min_ns == static_cast<std::uint64_t>(9 * kMs));
  CHECK(s.max_ns == static_cast<std::uint64_t>(15 * kMs));
  CHECK(s.timestamp_source == TimestampSource::kKernel);
  CHECK(s.lost == 1);

  // The chain continues into the next interval; one user-space stamp makes it user space.
  stats.on_event(sent(7, 500 * kMs));
  stats.on_event(reply(7, 500 * kMs, 4 * kMs));
  const IntervalSummary next = stats.close_interval(600 * kMs);
  CHECK(next.ipdv_count == 1);
  CHECK(next.jitter_mean_ns == doctest::Approx(5.0 * kMs));  // |4 - 9|
  CHECK(next.timestamp_source == TimestampSource::kUserspace);
}

TEST_CASE("an empty interval is all zeros") {
  TargetStats stats(config(), 5 * kMs);
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  CHECK(s.start_ns == 5 * kMs);
  CHECK(s.sent + s.received + s.lost + s.late + s.invalid + s.unexpected == 0);
  CHECK(s.p50_ns + s.p999_ns + s.max_ns + s.min_ns + s.jitter_p99_ns + s.ipdv_count == 0);
  CHECK(s.mean_ns == 0.0);
  CHECK(s.jitter_mean_ns == 0.0);
  CHECK(s.timestamp_source == TimestampSource::kUserspace);
}

TEST_CASE("garbage events are counted and ignored, never crash") {
  TargetStats stats(config(ProbeProtocol::kUdpEcho, 16), 0);
  stats.on_event(echo(5, 0, 1 * kMs, 1, 1, 1));  // before anything was sent
  CHECK(stats.close_interval(1).unexpected == 1);

  stats.on_event(sent(100, 10 * kMs));
  stats.on_event(echo(101, 10 * kMs, 1 * kMs, 1, 1, 1));  // reply before its kSent
  stats.on_event(echo(100, 10 * kMs, -1, 1, 1, 1));       // negative RTT
  stats.on_event(echo(100, 11 * kMs, 1 * kMs, 1, 1, 1));  // echoed send time not ours
  ProbeEvent dwell_too_long = echo(100, 10 * kMs, 1 * kMs, 1, 1, 1);
  dwell_too_long.reflector_dwell_ns = 2 * kMs;
  stats.on_event(dwell_too_long);
  ProbeEvent negative_dwell = dwell_too_long;
  negative_dwell.reflector_dwell_ns = -1;
  stats.on_event(negative_dwell);
  ProbeEvent extreme = echo(100, 10 * kMs, 0, 1, 1, 1);
  extreme.receive_ns = std::numeric_limits<std::int64_t>::min();
  stats.on_event(extreme);
  stats.on_event(sent(100, 10 * kMs));  // a repeated kSent
  stats.on_event(sent(99, 10 * kMs));   // and one going backwards
  ProbeEvent unknown_kind = sent(101, 0);
  unknown_kind.kind = static_cast<ProbeEventKind>(200);
  stats.on_event(unknown_kind);
  // After all that the real reply still counts.
  stats.on_event(echo(100, 10 * kMs, 2 * kMs, 1, 1, 1));
  stats.on_event(echo(100 - 40, 0, 1 * kMs, 1, 1, 1));  // long out of the window
  const IntervalSummary s = stats.close_interval(50 * kMs);
  CHECK(s.unexpected == 2);
  CHECK(s.invalid == 8);
  CHECK(s.sent == 1);
  CHECK(s.received == 1);
  CHECK(s.p50_ns == static_cast<std::uint64_t>(2 * kMs));

  // A wild jump forward retires the whole window at once instead of walking 2^63 seqs.
  stats.on_event(sent(101, 60 * kMs));
  stats.on_event(sent(101 + (std::uint64_t{1} << 62), 61 * kMs));
  stats.expire(std::numeric_limits<std::int64_t>::max());
  const IntervalSummary jumped = stats.close_interval(std::numeric_limits<std::int64_t>::min());
  CHECK(jumped.sent == 2);
  CHECK(jumped.lost == 2);
}

TEST_CASE("send errors are not sends, and close a probe that was sent") {
  TargetStats stats(config(ProbeProtocol::kTcpConnect), 0);
  stats.on_event(send_error(0));  // never left
  stats.on_event(sent(1, 0));
  stats.on_event(send_error(1));         // connect refused after the SYN
  stats.on_event(reply(1, 0, 1 * kMs));  // nothing to answer any more
  const IntervalSummary s = stats.close_interval(10 * kTimeout);
  CHECK(s.send_errors == 2);
  CHECK(s.sent == 1);
  CHECK(s.lost == 0);
  CHECK(s.received == 0);
  CHECK(s.unexpected == 1);
  CHECK(stats.outstanding() == 0);
}

TEST_CASE("a probe pushed out of a full window is lost and its reply is then unexpected") {
  TargetStats stats(config(ProbeProtocol::kUdpEcho, 1), 0);
  CHECK(stats.window() == TargetStatsConfig::kMinWindow);
  for (std::uint64_t i = 0; i < 20; ++i) {
    stats.on_event(sent(i, static_cast<std::int64_t>(i)));
  }
  stats.on_event(echo(2, 2, 10, 1, 1, 1));
  const IntervalSummary s = stats.close_interval(1000);
  CHECK(s.lost == 4);
  CHECK(s.unexpected == 1);
  CHECK(stats.outstanding() == 16);
}

TEST_CASE("the wire LatencySummary passes the verifier and round-trips") {
  TargetStats stats(config(), 0);
  Reflector reflector;
  for (std::uint64_t i = 0; i < 200; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * kMs;
    stats.on_event(sent(i, t));
    ++reflector.rx;
    if (i % 50 != 7) {
      ProbeEvent e = echo(i, t, static_cast<std::int64_t>(1'000'000 + i * 7919), reflector.boot,
                          reflector.session, reflector.rx);
      e.kernel_rx_timestamp = true;
      stats.on_event(e);
    }
  }
  stats.on_event(send_error(200));                    // a probe that never left the host
  stats.on_event(reply(5000, 190 * kMs, 1'000'000));  // never sent
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  REQUIRE(s.lost == 4);
  REQUIRE(s.send_errors == 1);
  REQUIRE(s.unexpected == 1);

  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency{
      build_latency_summary(fbb, "ams1-edge-02:7801", s),
      build_latency_summary(fbb, "idle:7801", TargetStats(config(), 0).close_interval(1))};
  const vantage::test::Bytes frame = vantage::test::finish_batch(
      fbb, wire::CreateBatchDirect(fbb, "fra1-edge-07", 1, 0, 1, "eu", "fra1", &latency));

  REQUIRE(vantage::test::verifies(frame));
  const wire::Batch* read = vantage::test::verified_batch(frame);
  REQUIRE(read != nullptr);
  REQUIRE(read->latency()->size() == 2);
  const wire::LatencySummary* l = read->latency()->Get(0);
  CHECK(l->target()->str() == "ams1-edge-02:7801");
  CHECK(l->protocol() == wire::Protocol::UdpEcho);
  CHECK(l->sent() == 200);
  CHECK(l->received() == 196);
  CHECK(l->lost() == 4);
  CHECK(l->lost_inbound() == 4);
  CHECK(l->lost_outbound() == 0);
  CHECK(l->p50_ns() == static_cast<std::int64_t>(s.p50_ns));
  CHECK(l->p999_ns() == static_cast<std::int64_t>(s.p999_ns));
  CHECK(l->max_ns() == static_cast<std::int64_t>(s.max_ns));
  CHECK(l->mean_ns() == s.mean_ns);
  CHECK(l->jitter_mean_ns() == s.jitter_mean_ns);
  CHECK(l->jitter_p99_ns() == static_cast<std::int64_t>(s.jitter_p99_ns));
  CHECK(l->timestamp_source() == wire::TimestampSource::Kernel);
  CHECK(l->histogram_scheme() == LatencyHistogram::kScheme);
  CHECK(l->send_errors() == 1);
  CHECK(l->unexpected() == 1);
  CHECK(l->invalid() == 0);
  CHECK(l->reflector_restarts() == 0);
  CHECK(l->session_resets() == 0);
  CHECK(l->ipdv_count() == s.ipdv_count);
  CHECK(l->ipdv_count() == 195);  // consecutive pairs among the 196 received
  CHECK(l->histogram_overflow() == 0);
  CHECK(l->histogram_dropped() == 0);

  // The buckets rebuild the same histogram on the collector side.
  std::vector<vantage::agent::SparseBucket> buckets;
  for (const wire::HistogramBucket* b : *l->histogram()) {
    buckets.push_back({b->index(), b->count()});
  }
  vantage::agent::HistogramSummary hs;
  hs.scheme = l->histogram_scheme();
  hs.count = l->received();
  hs.min_ns = static_cast<std::uint64_t>(l->min_ns());
  hs.max_ns = static_cast<std::uint64_t>(l->max_ns());
  hs.mean_ns = l->mean_ns();
  hs.stddev_ns = l->stddev_ns();
  hs.overflow = l->histogram_overflow();
  hs.dropped = l->histogram_dropped();
  const auto rebuilt = LatencyHistogram::from_sparse(hs, buckets);
  REQUIRE(rebuilt);
  CHECK(rebuilt->percentile(99.0) == s.p99_ns);

  const wire::LatencySummary* idle = read->latency()->Get(1);
  CHECK(idle->sent() == 0);
  CHECK(idle->histogram_scheme() == 0);
  CHECK(idle->histogram() == nullptr);

  IntervalSummary huge;
  huge.sent = std::uint64_t{1} << 40;
  flatbuffers::FlatBufferBuilder saturated;
  saturated.Finish(build_latency_summary(saturated, "x", huge));
  CHECK(flatbuffers::GetRoot<wire::LatencySummary>(saturated.GetBufferPointer())->sent() == UINT32_MAX);
}

TEST_CASE("every counter reaches its own wire field, saturating at 32 bits") {
  // Distinct values per field, so a field written into its neighbour's slot shows up.
  IntervalSummary in;
  in.send_errors = 11;
  in.unexpected = 12;
  in.invalid = 13;
  in.reflector_restarts = 14;
  in.session_resets = 15;
  in.ipdv_count = 16;
  in.rtt.record(5 * kMs);
  in.rtt.record(LatencyHistogram::kOverflowThreshold + 1);
  in.rtt.record(LatencyHistogram::kOverflowThreshold * 2);
  in.rtt.record_signed(-1);

  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(build_latency_summary(fbb, "x", in));
  flatbuffers::Verifier verifier(fbb.GetBufferPointer(), fbb.GetSize());
  REQUIRE(verifier.VerifyBuffer<wire::LatencySummary>(nullptr));
  const auto* l = flatbuffers::GetRoot<wire::LatencySummary>(fbb.GetBufferPointer());
  CHECK(l->send_errors() == 11);
  CHECK(l->unexpected() == 12);
  CHECK(l->invalid() == 13);
  CHECK(l->reflector_restarts() == 14);
  CHECK(l->session_resets() == 15);
  CHECK(l->ipdv_count() == 16);
  CHECK(l->histogram_overflow() == 2);
  CHECK(l->histogram_dropped() == 1);
  CHECK(l->histogram()->size() == 2);

  IntervalSummary huge;
  huge.send_errors = huge.unexpected = huge.invalid = std::uint64_t{1} << 33;
  huge.reflector_restarts = huge.session_resets = huge.ipdv_count = UINT64_MAX;
  flatbuffers::FlatBufferBuilder saturated;
  saturated.Finish(build_latency_summary(saturated, "x", huge));
  const auto* h = flatbuffers::GetRoot<wire::LatencySummary>(saturated.GetBufferPointer());
  CHECK(h->send_errors() == UINT32_MAX);
  CHECK(h->unexpected() == UINT32_MAX);
  CHECK(h->invalid() == UINT32_MAX);
  CHECK(h->reflector_restarts() == UINT32_MAX);
  CHECK(h->session_resets() == UINT32_MAX);
  CHECK(h->ipdv_count() == UINT32_MAX);
  CHECK(h->histogram_overflow() == 0);
  CHECK(h->histogram_dropped() == 0);
}

TEST_CASE("target stats: a steady target records without allocating and closes with one allocation") {
  TargetStats stats(config(), 0);
  std::uint64_t seq = 0;
  // RTTs of 20..24 ms and IPDVs of up to 4 ms: a few pages in each histogram.
  auto run_interval = [&](std::int64_t start_ns) {
    for (int i = 0; i < 50; ++i) {
      const std::int64_t send_ns = start_ns + i * 10 * kMs;
      const std::int64_t rtt = 20 * kMs + static_cast<std::int64_t>((i * 7919) % 4'000'000);
      stats.on_event(sent(seq, send_ns));
      stats.on_event(reply(seq, send_ns, rtt));
      ++seq;
    }
  };
  run_interval(0);
  IntervalSummary first = stats.close_interval(1'000 * kMs);
  REQUIRE(first.received == 50);
  const std::size_t pages = first.rtt.pages();
  CHECK(pages >= 1);
  CHECK(pages <= 4);
  CHECK(first.rtt.heap_bytes() == pages * LatencyHistogram::kPageSize * sizeof(std::uint32_t));

  // The second interval may still map pages: its first IPDV is against the first interval's
  // last reply, a difference the first interval never saw.
  run_interval(1'000 * kMs);
  static_cast<void>(stats.close_interval(2'000 * kMs));
  for (int k = 2; k <= 4; ++k) {
    const std::size_t before = vantage::test::allocations();
    run_interval(k * 1'000 * kMs);
    CHECK(vantage::test::allocations() == before);
    const IntervalSummary s = stats.close_interval((k + 1) * 1'000 * kMs);
    // The summary's own copy of the RTT pages, nothing else.
    CHECK(vantage::test::allocations() == before + 1);
    CHECK(s.received == 50);
    CHECK(s.rtt.count() == 50);
  }
  // An interval with no replies: its summary carries an empty histogram, allocating nothing.
  const std::size_t before = vantage::test::allocations();
  const IntervalSummary idle = stats.close_interval(6'000 * kMs);
  CHECK(idle.rtt.count() == 0);
  CHECK(idle.rtt.heap_bytes() == 0);
  CHECK(vantage::test::allocations() == before);
}

TEST_CASE("target stats: closing an interval when memory runs out still reports every reply") {
  TargetStats stats(config(), 0);
  for (std::uint64_t seq = 0; seq < 20; ++seq) {
    const std::int64_t send_ns = static_cast<std::int64_t>(seq) * 10 * kMs;
    stats.on_event(sent(seq, send_ns));
    stats.on_event(reply(seq, send_ns, 20 * kMs + static_cast<std::int64_t>(seq) * 1000));
  }
  // The summary cannot get its own copy of the pages: it takes the interval's buffer instead
  // of ending the process (close_interval cannot throw).
  vantage::test::fail_allocations(true);
  const IntervalSummary s = stats.close_interval(1'000 * kMs);
  vantage::test::fail_allocations(false);
  CHECK(s.received == 20);
  CHECK(s.rtt.count() == 20);
  CHECK(s.p50_ns >= 20 * kMs);
  // The next interval starts empty and records again once memory is back.
  stats.on_event(sent(20, 1'100 * kMs));
  stats.on_event(reply(20, 1'100 * kMs, 21 * kMs));
  const IntervalSummary next = stats.close_interval(2'000 * kMs);
  CHECK(next.received == 1);
  CHECK(next.rtt.count() == 1);
}

TEST_CASE("ECMP paths: per-path sent, received, lost and RTT, path = seq mod paths") {
  // 4 paths, 40 probes 10 ms apart: path 1 (seq 1, 5, 9, ...) never answers, path k answers
  // in (k + 1) ms.
  TargetStatsConfig c = config(ProbeProtocol::kUdpEcho, 256);
  c.paths = 4;
  TargetStats stats(c, 0);
  for (std::uint64_t i = 0; i < 40; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    if (i % 4 != 1) stats.on_event(reply(i, t, static_cast<std::int64_t>(i % 4 + 1) * kMs));
  }
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  CHECK(s.sent == 40);
  CHECK(s.received == 30);
  CHECK(s.lost == 10);
  REQUIRE(s.paths.size() == 4);
  for (std::uint16_t k = 0; k < 4; ++k) {
    CAPTURE(k);
    const PathSummary& p = s.paths[k];
    CHECK(p.path == k);
    CHECK(p.sent == 10);
    if (k == 1) {
      CHECK(p.received == 0);
      CHECK(p.lost == 10);
      CHECK(p.min_ns + p.max_ns == 0);
      CHECK(p.mean_ns == 0.0);
    } else {
      const auto rtt = static_cast<std::uint64_t>((k + 1) * kMs);
      CHECK(p.received == 10);
      CHECK(p.lost == 0);
      CHECK(p.min_ns == rtt);
      CHECK(p.max_ns == rtt);
      CHECK(p.mean_ns == doctest::Approx(static_cast<double>(rtt)));
    }
  }

  // The next interval starts from zero on every path, and the wire carries them.
  const IntervalSummary next = stats.close_interval(2000 * kMs);
  REQUIRE(next.paths.size() == 4);
  for (const PathSummary& p : next.paths) CHECK(p.sent + p.received + p.lost == 0);

  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(build_latency_summary(fbb, "t", s));
  const auto* l = flatbuffers::GetRoot<wire::LatencySummary>(fbb.GetBufferPointer());
  REQUIRE(l->paths() != nullptr);
  REQUIRE(l->paths()->size() == 4);
  CHECK(l->paths()->Get(1)->lost() == 10);
  CHECK(l->paths()->Get(1)->sent() == 10);
  CHECK(l->paths()->Get(2)->mean_ns() == 3 * kMs);
}

TEST_CASE("ECMP paths: a target with one path carries no path stats, on the wire neither") {
  TargetStats stats(config(), 0);
  stats.on_event(sent(0, 0));
  stats.on_event(reply(0, 0, kMs));
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  CHECK(s.paths.empty());
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(build_latency_summary(fbb, "t", s));
  CHECK(flatbuffers::GetRoot<wire::LatencySummary>(fbb.GetBufferPointer())->paths() == nullptr);
}

TEST_CASE("ECMP paths: a late reply taken back from lost in the same interval moves to received on its path") {
  TargetStatsConfig c = config(ProbeProtocol::kUdpEcho, 256);
  c.paths = 2;
  TargetStats stats(c, 0);
  stats.on_event(sent(0, 0));
  stats.on_event(sent(1, 0));
  stats.expire(kTimeout + kMs);  // both counted lost
  // Probe 1's reply was stamped in time but sat in the ring.
  stats.on_event(reply(1, 0, kTimeout / 2));
  const IntervalSummary s = stats.close_interval(1000 * kMs);
  REQUIRE(s.paths.size() == 2);
  CHECK(s.lost + s.received == 2);
  CHECK(s.paths[0].lost + s.paths[1].lost == s.lost);
  CHECK(s.paths[0].received + s.paths[1].received == s.received);
  CHECK(s.paths[1].lost + s.paths[1].received == 1);
}
