// The collector's in-memory view of the newest figures per agent, target and PoP, fed from the
// ingest's stored-batch hook and read by the HTTP side (/metrics, the status page): the request
// path never touches the store, so it works the same with any sink.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "collector/store/incoming_batch.hpp"
#include "schemas/agent_self_fields.hpp"

namespace vantage::collector {

struct LiveViewOptions {
  // Entries not updated for this long are dropped (a retired agent or target disappears from
  // /metrics instead of showing stale figures forever).
  std::chrono::seconds forget_after{3600};
  // Recent CPU-busy points kept per PoP and agent for the status page's sparklines.
  std::size_t load_history = 60;
};

// One (region, PoP, agent, target, protocol): the newest interval's summary.
// One ECMP path of a target's newest interval (wire::PathStats); at most kMaxLivePaths a target.
struct LivePath {
  std::uint16_t path = 0;
  std::uint16_t source_port = 0;
  std::uint32_t sent = 0, received = 0, lost = 0;
  double loss_ratio = 0.0;  // lost / (received + lost), 0 when neither
  std::int64_t min_ns = 0, mean_ns = 0, max_ns = 0;
};
inline constexpr std::size_t kMaxLivePaths = 64;  // the agent's bound on paths per target

// A summary's one-way delay (wire::OneWay): status says whether the figures can be trusted.
enum class OneWayStatus : std::uint8_t { kNotMeasured, kReported, kUnsynchronised, kBoundTooLarge };
inline constexpr std::size_t kOneWayStatusCount = 4;
// "not_measured", "reported", "unsynchronised", "bound_too_large": the /metrics label and JSON value.
const char* to_string(OneWayStatus status) noexcept;

struct LiveOneWay {
  OneWayStatus status = OneWayStatus::kNotMeasured;
  std::int64_t error_bound_ns = 0;  // sender + reflector error estimates used for the decision
  double max_error_fraction = 0.0;
  bool sender_synchronised = false, reflector_synchronised = false;
  std::int64_t sender_error_ns = 0, reflector_error_ns = 0;
  std::uint32_t samples = 0;
  // 0 unless status is kReported.
  std::int64_t forward_min_ns = 0, forward_p50_ns = 0, forward_p99_ns = 0, forward_max_ns = 0;
  std::int64_t backward_min_ns = 0, backward_p50_ns = 0, backward_p99_ns = 0, backward_max_ns = 0;
};

struct LiveLatency {
  std::string region, pop, agent_id, target, protocol;
  std::int64_t interval_end_ns = 0;
  std::int64_t updated_ns = 0;  // collector wall clock when it was stored
  std::uint32_t sent = 0, received = 0, lost = 0;
  double loss_ratio = 0.0;  // lost / (received + lost), 0 when neither
  std::int64_t p50_ns = 0, p90_ns = 0, p99_ns = 0, p999_ns = 0, max_ns = 0;
  double mean_ns = 0.0;
  double jitter_mean_ns = 0.0;
  std::int64_t jitter_p99_ns = 0;
  bool unresolved = false;  // the agent could not resolve the target's name: not probed, not loss
  std::vector<LivePath> paths;  // empty unless the target is probed over several ECMP paths
  std::optional<LiveOneWay> one_way;  // absent when the summary carried none (an older agent)
};

struct LoadPoint {
  std::int64_t time_ns = 0;
  double cpu_busy = 0.0;
};

// The newest host load sample of one agent (so of its PoP).
struct LiveLoad {
  std::string region, pop, agent_id;
  std::int64_t time_ns = 0;
  std::int64_t updated_ns = 0;
  std::optional<double> cpu_busy;  // 1 - idle - iowait of the all-CPU total
  std::optional<std::uint64_t> mem_total, mem_available;
  std::optional<double> load1;
  std::optional<double> psi_cpu_some, psi_memory_some, psi_io_some;  // absent without PSI
  std::vector<LoadPoint> history;                                    // oldest first
};

using LiveAgentSelf = wire::AgentSelfValues;  // schemas/agent_self_fields.hpp

// The agent's clock as its newest batch describes it (wire::ClockState).
struct LiveClock {
  bool synchronised = false;
  std::int64_t estimated_error_ns = 0;
  std::int64_t maximum_error_ns = 0;
  std::string source;  // "unknown", "chrony", "ntpd", "timesyncd", "ptp", "pps", "configured"
};

struct LiveAgent {
  std::string region, pop, agent_id;
  std::string incarnation;        // of the newest batch stored: its spool incarnation, 32 hex digits
  std::uint64_t seq = 0;          // of the newest batch stored, in that incarnation
  std::int64_t interval_end_ns = 0;  // of the newest batch stored
  std::int64_t last_seen_ns = 0;  // collector wall clock
  std::uint64_t spool_dropped = 0;
  std::optional<LiveAgentSelf> self;
  std::optional<LiveClock> clock;  // from the newest batch; absent when it carried none
};

struct LiveSnapshot {
  std::vector<LiveLatency> latency;  // ordered by region, pop, agent, target, protocol
  std::vector<LiveLoad> load;        // ordered by region, pop, agent
  std::vector<LiveAgent> agents;     // ordered by agent id
};

// Threads: record() on the ingest's store thread, snapshot() from any thread; one mutex, held for
// a map update or a copy (a few hundred entries in a fleet of PoPs), never across I/O.
class LiveView {
 public:
  explicit LiveView(LiveViewOptions options = {}) : options_(options) {}

  // Takes in one stored batch; a batch older than what is held for a key does not replace it
  // (agents resend after a reconnect: a late resend must not roll the view back).
  void record(const store::IncomingBatch& batch);

  // Everything updated within forget_after of now_ns (collector wall clock); older entries are
  // dropped from the view as well.
  LiveSnapshot snapshot(std::int64_t now_ns);

  std::size_t size() const;

 private:
  using LatencyKey = std::tuple<std::string, std::string, std::string, std::string, std::string>;
  using LoadKey = std::tuple<std::string, std::string, std::string>;

  void forget_locked(std::int64_t now_ns);

  LiveViewOptions options_;
  mutable std::mutex mutex_;
  std::map<LatencyKey, LiveLatency> latency_;
  std::map<LoadKey, LiveLoad> load_;
  std::map<std::string, LiveAgent> agents_;
  std::int64_t last_forget_ns_ = 0;
};

}  // namespace vantage::collector
