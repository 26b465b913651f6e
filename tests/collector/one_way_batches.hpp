// Test batches with the one-way delay and clock-state fields filled as an agent that knows them
// sends them: one STAMP summary reported, one UDP echo summary unsynchronised, one TCP summary
// without one_way, and the batch's clock state; the figures are distinct so a swapped column shows.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::test {

struct OneWayBatchSpec {
  std::string agent = "fra-1";
  std::string pop = "fra1";
  std::uint64_t seq = 1;
  std::int64_t interval_start_ns = 0;
  std::int64_t interval_end_ns = 0;
  bool with_clock = true;
  bool clock_synchronised = true;
  wire::ClockSource clock_source = wire::ClockSource::Chrony;
  // The STAMP summary's status: Reported carries the figures below, anything else carries zeros.
  wire::OneWayStatus stamp_status = wire::OneWayStatus::Reported;
};

// Figures of the STAMP summary when reported.
inline constexpr std::int64_t kForwardP50Ns = 30'000'000;
inline constexpr std::int64_t kForwardP99Ns = 31'500'000;
inline constexpr std::int64_t kBackwardP50Ns = 5'000'000;
inline constexpr std::int64_t kBackwardP99Ns = 6'250'000;
inline constexpr std::int64_t kErrorBoundNs = 100'000;
inline constexpr std::int64_t kClockEstimatedErrorNs = 40'000;
inline constexpr std::int64_t kClockMaximumErrorNs = 250'000;
inline constexpr std::uint16_t kStampSsid = 4242;

inline Bytes one_way_batch(const OneWayBatchSpec& spec) {
  flatbuffers::FlatBufferBuilder fbb;
  const bool reported = spec.stamp_status == wire::OneWayStatus::Reported;
  const std::vector<wire::HistogramBucket> fwd_buckets{{1200, 7}, {1210, 3}};
  const std::vector<wire::HistogramBucket> bwd_buckets{{900, 10}};
  const auto stamp_one_way = wire::CreateOneWayDirect(
      fbb, spec.stamp_status, kErrorBoundNs, 0.1f, /*sender_synchronised=*/true,
      /*reflector_synchronised=*/spec.stamp_status != wire::OneWayStatus::Unsynchronised, 40'000, 60'000,
      /*samples=*/10, reported ? 29'000'000 : 0, reported ? kForwardP50Ns : 0, reported ? 31'000'000 : 0,
      reported ? kForwardP99Ns : 0, reported ? 32'000'000 : 0, reported ? 4'500'000 : 0,
      reported ? kBackwardP50Ns : 0, reported ? 6'000'000 : 0, reported ? kBackwardP99Ns : 0,
      reported ? 7'000'000 : 0, /*histogram_scheme=*/2, reported ? &fwd_buckets : nullptr,
      reported ? &bwd_buckets : nullptr);
  const auto udp_one_way = wire::CreateOneWay(fbb, wire::OneWayStatus::Unsynchronised, 9'000'000, 0.1f,
                                              /*sender_synchronised=*/false, /*reflector_synchronised=*/true,
                                              16'000'000, 500'000, 10);
  const auto summary = [&](const char* target, wire::Protocol protocol, std::int64_t p50,
                           flatbuffers::Offset<wire::OneWay> one_way, std::uint16_t ssid) {
    const auto name = fbb.CreateString(target);
    wire::LatencySummaryBuilder l(fbb);
    l.add_target(name);
    l.add_protocol(protocol);
    l.add_sent(10);
    l.add_received(10);
    l.add_min_ns(p50 - 1000);
    l.add_max_ns(p50 + 5000);
    l.add_mean_ns(static_cast<double>(p50));
    l.add_p50_ns(p50);
    l.add_p90_ns(p50 + 1000);
    l.add_p99_ns(p50 + 2000);
    l.add_p999_ns(p50 + 3000);
    if (!one_way.IsNull()) l.add_one_way(one_way);
    if (ssid != 0) l.add_stamp_ssid(ssid);
    return l.Finish();
  };
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency{
      summary("router1:862", wire::Protocol::Stamp, 35'000'000, stamp_one_way, kStampSsid),
      summary("ams1:7000", wire::Protocol::UdpEcho, 12'000'000, udp_one_way, 0),
      summary("ams1:443", wire::Protocol::TcpConnect, 13'000'000, {}, 0)};
  const auto latency_vec = fbb.CreateVector(latency);
  const auto clock = spec.with_clock ? wire::CreateClockState(fbb, spec.clock_synchronised, kClockEstimatedErrorNs,
                                                              kClockMaximumErrorNs, spec.clock_source)
                                     : flatbuffers::Offset<wire::ClockState>();
  const auto agent = fbb.CreateString(spec.agent);
  const auto region = fbb.CreateString("eu-central");
  const auto pop = fbb.CreateString(spec.pop);
  wire::BatchBuilder b(fbb);
  b.add_agent_id(agent);
  b.add_seq(spec.seq);
  b.add_interval_start_ns(spec.interval_start_ns);
  b.add_interval_end_ns(spec.interval_end_ns);
  b.add_region(region);
  b.add_pop(pop);
  b.add_latency(latency_vec);
  if (spec.with_clock) b.add_clock(clock);
  return finish_batch(fbb, b.Finish());
}

}  // namespace vantage::test
