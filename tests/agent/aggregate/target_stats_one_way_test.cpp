// Tests for TargetStats' one-way delay (the gate on both clocks' state and error bound, the
// forward/backward figures, memory only for targets that have one-way samples) and for STAMP's
// send_ns_from_slot and session_id 0.
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "agent/aggregate/target_stats.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace {

using namespace vantage::agent::aggregate;
using vantage::agent::probes::ProbeEvent;
using vantage::agent::probes::ProbeEventKind;
using vantage::agent::probes::ProbeProtocol;
namespace wire = vantage::wire;

constexpr std::int64_t kUs = 1'000;
constexpr std::int64_t kMs = 1'000'000;

TargetStatsConfig config(ProbeProtocol protocol = ProbeProtocol::kUdpEcho) {
  TargetStatsConfig c;
  c.protocol = protocol;
  c.timeout_ns = 100 * kMs;
  c.window = 64;
  return c;
}

ProbeEvent sent(std::uint64_t seq, std::int64_t send_ns) {
  ProbeEvent e;
  e.kind = ProbeEventKind::kSent;
  e.seq = seq;
  e.send_ns = send_ns;
  return e;
}

struct Clocks {
  bool sender_sync = true;
  bool reflector_sync = true;
  std::int64_t sender_error = 50 * kUs;
  std::int64_t reflector_error = 50 * kUs;
};

// A reply of a probe that took `forward` out and `backward` back (monotonic RTT = their sum).
ProbeEvent one_way_reply(std::uint64_t seq, std::int64_t send_ns, std::int64_t forward, std::int64_t backward,
                         const Clocks& c) {
  ProbeEvent e;
  e.kind = ProbeEventKind::kReply;
  e.seq = seq;
  e.send_ns = send_ns;
  e.receive_ns = send_ns + forward + backward;
  e.session_id = 1;
  e.session_rx = static_cast<std::uint32_t>(seq + 1);
  e.one_way = true;
  e.forward_ns = forward;
  e.backward_ns = backward;
  e.sender_synchronised = c.sender_sync;
  e.reflector_synchronised = c.reflector_sync;
  e.sender_error_ns = c.sender_error;
  e.reflector_error_ns = c.reflector_error;
  return e;
}

// 30 ms out and 5 ms back, each with up to 1 ms of spread.
IntervalSummary run(TargetStats& stats, const Clocks& c, std::uint64_t first_seq = 0, std::int64_t start = 0) {
  for (std::uint64_t i = 0; i < 40; ++i) {
    const std::uint64_t seq = first_seq + i;
    const std::int64_t t = start + static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(seq, t));
    const auto spread = static_cast<std::int64_t>((i * 7919) % 1000) * kUs;
    stats.on_event(one_way_reply(seq, t, 30 * kMs + spread, 5 * kMs + spread / 2, c));
  }
  return stats.close_interval(start + 1'000 * kMs);
}

const wire::OneWay* wire_one_way(vantage::test::Bytes& frame, flatbuffers::FlatBufferBuilder& fbb,
                                 const IntervalSummary& s) {
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency{build_latency_summary(fbb, "t:7801", s)};
  frame = vantage::test::finish_batch(fbb, wire::CreateBatchDirect(fbb, "a", 1, 0, 1, "eu", "fra1", &latency));
  REQUIRE(vantage::test::verifies(frame));
  const wire::Batch* batch = vantage::test::verified_batch(frame);
  REQUIRE(batch->latency()->size() == 1);
  return batch->latency()->Get(0)->one_way();
}

}  // namespace

TEST_CASE("one-way: synchronised clocks with a small bound report forward and backward medians") {
  TargetStats stats(config(), 0);
  const IntervalSummary s = run(stats, Clocks{});
  CHECK(s.received == 40);
  const OneWaySummary& w = s.one_way;
  CHECK(w.status == OneWayStatus::kReported);
  CHECK(w.samples == 40);
  CHECK(w.error_bound_ns == 100 * kUs);
  CHECK(w.max_error_fraction == doctest::Approx(0.1));
  CHECK(w.sender_synchronised);
  CHECK(w.reflector_synchronised);
  CHECK(w.forward_min_ns >= 30 * kMs);
  CHECK(w.forward_p50_ns > 30 * kMs);
  CHECK(w.forward_p50_ns < 31 * kMs);
  CHECK(w.backward_p50_ns > 5 * kMs);
  CHECK(w.backward_p50_ns < 5 * kMs + kMs / 2 + 50 * kUs);
  CHECK(w.forward_max_ns < 31 * kMs);
  CHECK(w.backward_p99_ns >= w.backward_p50_ns);
  REQUIRE(w.histograms != nullptr);
  CHECK(w.histograms->forward.count() == 40);
  CHECK(w.histograms->backward.count() == 40);

  vantage::test::Bytes frame;
  flatbuffers::FlatBufferBuilder fbb;
  const wire::OneWay* ow = wire_one_way(frame, fbb, s);
  REQUIRE(ow != nullptr);
  CHECK(ow->status() == wire::OneWayStatus::Reported);
  CHECK(ow->error_bound_ns() == 100 * kUs);
  CHECK(ow->samples() == 40);
  CHECK(ow->forward_p50_ns() == static_cast<std::int64_t>(w.forward_p50_ns));
  CHECK(ow->backward_p50_ns() == static_cast<std::int64_t>(w.backward_p50_ns));
  CHECK(ow->histogram_scheme() == vantage::agent::LatencyHistogram::kScheme);
  REQUIRE(ow->forward_histogram() != nullptr);
  REQUIRE(ow->backward_histogram() != nullptr);
  std::uint64_t total = 0;
  for (const auto* b : *ow->forward_histogram()) total += b->count();
  CHECK(total == 40);
}

TEST_CASE("one-way: an unsynchronised end gives no figures and says so, with the bound") {
  for (const bool sender_unsync : {true, false}) {
    TargetStats stats(config(), 0);
    Clocks c;
    (sender_unsync ? c.sender_sync : c.reflector_sync) = false;
    const IntervalSummary s = run(stats, c);
    const OneWaySummary& w = s.one_way;
    CHECK(w.status == OneWayStatus::kUnsynchronised);
    CHECK(w.samples == 40);
    CHECK(w.error_bound_ns == 100 * kUs);
    CHECK(w.sender_synchronised == !sender_unsync);
    CHECK(w.reflector_synchronised == sender_unsync);
    CHECK(w.forward_p50_ns == 0);
    CHECK(w.backward_p50_ns == 0);
    CHECK(w.forward_max_ns == 0);
    CHECK(w.histograms == nullptr);
    CHECK(s.p50_ns > 35 * kMs);  // RTT is reported as ever

    vantage::test::Bytes frame;
    flatbuffers::FlatBufferBuilder fbb;
    const wire::OneWay* ow = wire_one_way(frame, fbb, s);
    REQUIRE(ow != nullptr);
    CHECK(ow->status() == wire::OneWayStatus::Unsynchronised);
    CHECK(ow->forward_p50_ns() == 0);
    CHECK(ow->forward_histogram() == nullptr);
    CHECK(ow->error_bound_ns() == 100 * kUs);
  }
}

TEST_CASE("one-way: one unsynchronised reply makes the whole interval unsynchronised") {
  TargetStats stats(config(), 0);
  for (std::uint64_t i = 0; i < 10; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    Clocks c;
    c.reflector_sync = i != 4;
    stats.on_event(one_way_reply(i, t, 30 * kMs, 5 * kMs, c));
  }
  CHECK(stats.close_interval(1'000 * kMs).one_way.status == OneWayStatus::kUnsynchronised);
  // The next interval starts afresh.
  CHECK(run(stats, Clocks{}, 10, 1'000 * kMs).one_way.status == OneWayStatus::kReported);
}

TEST_CASE("one-way: a bound at or above the fraction of the smaller median gives no figures") {
  // Backward median ~5.25 ms: 10 % is ~525 us. A bound of 2 * 300 us is too large.
  TargetStats stats(config(), 0);
  Clocks c;
  c.sender_error = 300 * kUs;
  c.reflector_error = 300 * kUs;
  const OneWaySummary w = run(stats, c).one_way;
  CHECK(w.status == OneWayStatus::kBoundTooLarge);
  CHECK(w.error_bound_ns == 600 * kUs);
  CHECK(w.sender_error_ns == 300 * kUs);
  CHECK(w.reflector_error_ns == 300 * kUs);
  CHECK(w.forward_p50_ns == 0);
  CHECK(w.histograms == nullptr);

  // The same replies pass with a looser fraction.
  TargetStatsConfig loose = config();
  loose.max_error_fraction = 0.5;
  TargetStats passes(loose, 0);
  const OneWaySummary p = run(passes, c).one_way;
  CHECK(p.status == OneWayStatus::kReported);
  CHECK(p.max_error_fraction == doctest::Approx(0.5));
}

TEST_CASE("one-way: the bound is the largest combined error of the interval") {
  TargetStats stats(config(), 0);
  for (std::uint64_t i = 0; i < 3; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    Clocks c;
    c.sender_error = i == 0 ? 200 * kUs : 10 * kUs;
    c.reflector_error = i == 1 ? 150 * kUs : 10 * kUs;
    stats.on_event(one_way_reply(i, t, 30 * kMs, 30 * kMs, c));
  }
  const OneWaySummary w = stats.close_interval(1'000 * kMs).one_way;
  CHECK(w.error_bound_ns == 210 * kUs);
  CHECK(w.sender_error_ns == 200 * kUs);
  CHECK(w.reflector_error_ns == 150 * kUs);
  CHECK(w.status == OneWayStatus::kReported);
}

TEST_CASE("one-way: clocks apart by more than the delay never report") {
  TargetStats stats(config(), 0);
  for (std::uint64_t i = 0; i < 10; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    ProbeEvent e = one_way_reply(i, t, 30 * kMs, 5 * kMs, Clocks{});
    e.forward_ns = 30 * kMs + 10 * kMs;  // reflector 10 ms ahead
    e.backward_ns = 5 * kMs - 10 * kMs;
    stats.on_event(e);
  }
  const OneWaySummary w = stats.close_interval(1'000 * kMs).one_way;
  CHECK(w.status == OneWayStatus::kBoundTooLarge);
}

TEST_CASE("one-way: not measured without one-way replies, and no histogram memory for such a target") {
  TargetStats stats(config(), 0);
  for (std::uint64_t i = 0; i < 10; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    ProbeEvent e = one_way_reply(i, t, 30 * kMs, 5 * kMs, Clocks{});
    e.one_way = false;  // an old reflector: no stamps
    stats.on_event(e);
  }
  const IntervalSummary s = stats.close_interval(1'000 * kMs);
  CHECK(s.received == 10);
  CHECK(s.one_way.status == OneWayStatus::kNotMeasured);
  CHECK(s.one_way.samples == 0);
  CHECK_FALSE(stats.has_one_way_state());
  vantage::test::Bytes frame;
  flatbuffers::FlatBufferBuilder fbb;
  const wire::OneWay* ow = wire_one_way(frame, fbb, s);
  REQUIRE(ow != nullptr);
  CHECK(ow->status() == wire::OneWayStatus::NotMeasured);

  // The first one-way reply allocates; TCP and ICMP summaries carry no OneWay table.
  run(stats, Clocks{}, 10, 1'000 * kMs);
  CHECK(stats.has_one_way_state());
  TargetStats tcp(config(ProbeProtocol::kTcpConnect), 0);
  vantage::test::Bytes tcp_frame;
  flatbuffers::FlatBufferBuilder tcp_fbb;
  CHECK(wire_one_way(tcp_frame, tcp_fbb, tcp.close_interval(1)) == nullptr);
}

TEST_CASE("STAMP: send_ns_from_slot takes the recorded send time, and session_id 0 leaves loss direction alone") {
  TargetStats stats(config(ProbeProtocol::kStamp), 0);
  for (std::uint64_t i = 0; i < 10; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    if (i == 3 || i == 4) continue;  // lost
    ProbeEvent e;
    e.kind = ProbeEventKind::kReply;
    e.protocol = ProbeProtocol::kStamp;
    e.seq = i;
    e.send_ns = 0;
    e.send_ns_from_slot = true;
    e.receive_ns = t + 2 * kMs;
    e.reflector_dwell_ns = 100 * kUs;
    e.session_id = 0;  // stateless reflector
    stats.on_event(e);
  }
  const IntervalSummary s = stats.close_interval(1'000 * kMs);
  CHECK(s.received == 8);
  CHECK(s.invalid == 0);
  CHECK(s.lost == 2);
  CHECK(s.lost_outbound == 0);
  CHECK(s.lost_inbound == 0);
  CHECK(s.min_ns == static_cast<std::uint64_t>(2 * kMs - 100 * kUs));
  CHECK(s.max_ns == static_cast<std::uint64_t>(2 * kMs - 100 * kUs));

  // Without the flag a send time of 0 does not match the slot's: invalid, as before.
  TargetStats strict(config(ProbeProtocol::kStamp), 0);
  strict.on_event(sent(0, 5 * kMs));
  ProbeEvent e;
  e.kind = ProbeEventKind::kReply;
  e.seq = 0;
  e.receive_ns = 7 * kMs;
  strict.on_event(e);
  CHECK(strict.close_interval(1'000 * kMs).invalid == 1);
}

TEST_CASE("STAMP: a stateful reflector's counters split the losses by direction") {
  TargetStats stats(config(ProbeProtocol::kStamp), 0);
  std::uint32_t rx = 0;
  for (std::uint64_t i = 0; i < 10; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(i) * 10 * kMs;
    stats.on_event(sent(i, t));
    if (i == 3) continue;  // lost on the way out
    ++rx;
    if (i == 5) continue;  // lost on the way back
    ProbeEvent e;
    e.kind = ProbeEventKind::kReply;
    e.seq = i;
    e.send_ns_from_slot = true;
    e.receive_ns = t + 2 * kMs;
    e.reflector_boot = 1;
    e.session_id = 9;
    e.session_rx = rx;
    stats.on_event(e);
  }
  const IntervalSummary s = stats.close_interval(1'000 * kMs);
  CHECK(s.lost == 2);
  CHECK(s.lost_outbound == 1);
  CHECK(s.lost_inbound == 1);
}

TEST_CASE("STAMP: the summary carries the target's SSID, other protocols none") {
  TargetStatsConfig c = config();
  c.protocol = vantage::agent::probes::ProbeProtocol::kStamp;
  c.stamp_ssid = 4242;
  TargetStats stamp(c, 0);
  vantage::test::Bytes frame;
  flatbuffers::FlatBufferBuilder fbb;
  const IntervalSummary s = run(stamp, Clocks{});
  CHECK(s.stamp_ssid == 4242);
  REQUIRE(wire_one_way(frame, fbb, s) != nullptr);
  const wire::LatencySummary* l = vantage::test::verified_batch(frame)->latency()->Get(0);
  CHECK(l->protocol() == wire::Protocol::Stamp);
  CHECK(l->stamp_ssid() == 4242);

  TargetStats echo(config(), 0);
  vantage::test::Bytes echo_frame;
  flatbuffers::FlatBufferBuilder echo_fbb;
  (void)wire_one_way(echo_frame, echo_fbb, run(echo, Clocks{}));
  CHECK(vantage::test::verified_batch(echo_frame)->latency()->Get(0)->stamp_ssid() == 0);
}
