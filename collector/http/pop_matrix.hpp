// The status page's PoP latency matrix as compact JSON (/api/matrix: one cell per PoP pair, in
// columns, so 300 PoPs' 89,700 pairs stay a few MB) and a PoP pair's drill-down from the store
// (/api/pair: its intervals over a time range, grouped into bounded steps).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "collector/live_view.hpp"
#include "collector/store/sqlite_store.hpp"

namespace vantage::collector::http {

// One (source PoP, target) pair: the live figures of every agent filed under that PoP, under the
// pair's preferred protocol (UDP echo, then STAMP, then TCP connect, then ICMP). Several agents of one PoP
// merge as: counts summed, loss from the sums, p50 the median of the agents' p50s, p99 the
// highest p99 (the pair is as bad as its worst agent's tail).
struct PopMatrixCell {
  std::uint32_t src = 0, dst = 0;  // indexes into PopMatrix::pops
  std::string protocol;
  double p50_ms = 0.0, p99_ms = 0.0, loss = 0.0;
  std::uint64_t sent = 0, received = 0, lost = 0;
  std::uint32_t agents = 0;
  std::uint32_t first_agent = 0;  // index into PopMatrix::agent_ids
  bool unresolved = false;        // every agent lacks an address for the target's name
  double age_s = 0.0;             // of the freshest interval among the agents
  // One-way delay, merged like the round trip: -1 when no agent's summary carried it, else the
  // least trustworthy status among the agents (an OneWayStatus: unsynchronised, then bound too
  // large, then reported, then not measured), so one agent with a bad clock marks the pair.
  // Figures only when that is reported.
  int one_way_status = -1;
  bool sender_unsynchronised = false, reflector_unsynchronised = false;  // of any agent's interval
  double one_way_error_bound_ms = 0.0;  // the largest
  double forward_p50_ms = 0.0, forward_p99_ms = 0.0, backward_p50_ms = 0.0, backward_p99_ms = 0.0;
};

struct PopMatrix {
  std::vector<std::string> pops;       // every name, sorted: sources, targets, agents' PoPs
  std::vector<std::uint32_t> rows;     // pops that measure (a source or an agent's PoP)
  std::vector<std::string> agent_ids;  // sorted
  std::vector<PopMatrixCell> cells;    // by src, then dst
};

PopMatrix build_pop_matrix(const LiveSnapshot& view, std::int64_t now_ns);
std::string render_matrix_json(const PopMatrix& matrix, std::int64_t now_ns);

// GET /api/pair's parameters: from, to (PoP and target names, 1..256 bytes of UTF-8 without
// control characters), since and until (Unix seconds, integers; until defaults to now, since to
// an hour before until; until - since is 1 s .. kMaxPairRangeS), protocol (optional: one of
// udp_echo, stamp, tcp_connect, icmp; default the pair's preferred one).
inline constexpr std::int64_t kMaxPairRangeS = 7 * 86'400;
// Points a drill-down returns at most: a longer range is grouped into coarser steps.
inline constexpr std::int64_t kMaxPairPoints = 3'600;

struct PairRequest {
  std::string from, to, protocol;
  std::int64_t since_s = 0, until_s = 0;
};

// Parses and checks the query parameters (a multimap, as cpp-httplib holds them; a repeated one is
// refused). On failure the string says what is wrong, for a 400.
struct PairRequestOrError {
  std::optional<PairRequest> request;
  std::string error;
};
PairRequestOrError parse_pair_request(const std::multimap<std::string, std::string>& params, std::int64_t now_ns);

// Groups the store's intervals (every agent of the PoP, every protocol) into steps of
// ceil(range / kMaxPairPoints) seconds (at least 1) under one protocol, merged like matrix cells.
// Intervals are added one at a time as the store reads them; what a step keeps of one is its p50
// (8 bytes, for the step's median) and counts, so a 7-day range over a busy PoP stays small.
class PairSteps {
 public:
  explicit PairSteps(PairRequest request);
  ~PairSteps();
  PairSteps(const PairSteps&) = delete;
  PairSteps& operator=(const PairSteps&) = delete;

  void add(const store::PairPoint& point);
  // The JSON, under the request's protocol or else the preferred one of those added.
  std::string render_json();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The same for intervals already in hand.
std::string render_pair_json(const PairRequest& request, std::span<const store::PairPoint> points);

}  // namespace vantage::collector::http
