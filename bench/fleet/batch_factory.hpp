// BatchFactory: the frames a simulated agent sends, built cheaply per send from a pool of
// realistic per-target summaries (sparse log-linear histograms as agent/aggregate/latency_histogram.hpp
// produces them), plus the same summaries as Influx line protocol for the VictoriaMetrics peer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vantage::fleet {

struct AgentIdentity {
  std::string agent_id;  // the certificate's CN
  std::string region;    // the certificate's OU
  std::string pop;
  std::uint32_t index = 0;  // position in the fleet, names the agent's targets
  // The simulated spool's incarnation, sent in Hello (all zero: none, the legacy form); with the
  // agent id and seq it is what the store keys a batch by.
  std::array<std::uint8_t, 16> incarnation{};
};

// One target's interval: counters, RTT statistics and the non-empty histogram buckets.
struct SummaryShape {
  std::uint32_t sent = 0, received = 0, lost = 0, reordered = 0, duplicates = 0, late = 0;
  std::int64_t min_ns = 0, max_ns = 0, p50_ns = 0, p90_ns = 0, p99_ns = 0, p999_ns = 0, jitter_p99_ns = 0;
  double mean_ns = 0.0, stddev_ns = 0.0, jitter_mean_ns = 0.0;
  std::uint32_t ipdv_count = 0;
  std::vector<std::pair<std::uint16_t, std::uint32_t>> buckets;  // (index, count), ascending
};

class BatchFactory {
 public:
  // targets: latency summaries per batch; fleet_size: how many agents name each other as targets.
  BatchFactory(std::size_t targets, std::uint32_t fleet_size, std::uint64_t seed, std::size_t pool = 256);

  std::size_t targets() const noexcept { return targets_; }
  // "10.a.b.c:8627": the reflector address of another agent of the fleet.
  std::string target_name(const AgentIdentity& agent, std::size_t t) const;
  const SummaryShape& shape(const AgentIdentity& agent, std::size_t t) const;

  // Length-prefixed frames (ready to write). Thread-safe.
  std::vector<std::uint8_t> hello_frame(const AgentIdentity& agent) const;
  std::vector<std::uint8_t> batch_frame(const AgentIdentity& agent, std::uint64_t seq, std::int64_t start_ns,
                                        std::int64_t end_ns) const;
  // One line per summary of the batch, tags agent/target/pop/protocol, every number a field.
  void append_influx_lines(std::string& out, const AgentIdentity& agent, std::int64_t end_ns) const;

  // Statistics of the pool (for the report): non-empty buckets per summary, min and max.
  std::pair<std::size_t, std::size_t> bucket_range() const;

 private:
  std::size_t targets_;
  std::uint32_t fleet_size_;
  std::vector<SummaryShape> pool_;
};

}  // namespace vantage::fleet
