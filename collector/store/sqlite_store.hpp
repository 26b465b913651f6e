// The collector's SQLite store: verified telemetry batches in, one durable transaction per group
// of batches, idempotent by (agent, incarnation, seq); plus the read side for `vantage-collector query`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/store/incoming_batch.hpp"
#include "schemas/agent_self_fields.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::collector::store {

// Tables, as operators query them (schema v5; times are ns since the Unix epoch unless named
// otherwise; `seq` is the agent's u64 sequence number stored as its two's-complement int64 bit
// pattern, so ordering is by value for every seq below 2^63, which a one-per-second counter never
// reaches).
//
// Dictionaries (one row per key, small, never partitioned):
//   agents      id (INTEGER, what the data tables hold) and agent_id (the certificate identity);
//               region, pop, arch, software_version (the last non-empty values seen),
//               first_seen_ns, last_seen_ns (collector receive times); and the agent's running
//               totals, rewritten once per group commit: batch_count (batches held in the retained
//               partitions), incarnation, max_seq and spool_dropped (from the highest seq stored
//               under the agent's newest incarnation, newest meaning first seen last), and
//               where its newest batch (latest_*), newest load sample (load_*) and newest
//               self-metrics (self_*) are: a partition day plus a row id.
//   incarnations id and incarnation (the 16 bytes an agent's Hello carries, named when its spool
//               was created), first_seen_ns. Id 0 is the legacy incarnation, all zero bytes: what
//               agents that send none are under, and every batch stored before schema v4.
//   targets     id, name (as the agent labels it: host:port, or a pseudonym), protocol
//               ("udp_echo", "tcp_connect", "icmp", "stamp", "unknown"); unique (name, protocol).
//   pairs       one row per (agent, target) ever seen: where its latest summary is. NULL best_*
//               means "in the agent's newest batch" (agents.latest_*), the steady state, so the
//               row is written only when a pair stops or starts appearing in its agent's newest
//               batch, not per summary. "Latest" ranks a summary that sent probes above one that
//               did not (an agent's last, partial interval while it drains), then by interval.
//   partitions  one row per day partition: day (days since the epoch, UTC), name (dYYYYMMDD).
//
// Data, one set of tables per UTC day of the batch's interval_end_ns (named by the date, e.g.
// batches_d20260921); a batch's partition is a function of its content, so a resent batch meets
// its first copy there. Retention (OpenOptions::retention_days) drops whole partitions.
//   batches_D   one row per batch: id (INTEGER PRIMARY KEY), agent, seq, the interval, when the
//               collector received it, the region/pop it was filed under, how many children it
//               had, the agent's spool_dropped counter and incarnation (incarnations.id). The
//               unique index batches_D_key on (agent, incarnation, seq) is the batch key: it
//               makes delivery idempotent (a batch resent with the same key is acked again but
//               never stored twice; if its content differs the first one stored wins, since
//               rewriting acked and read data is worse), while a reinstalled agent, whose seq
//               starts again at 1 under a new incarnation, is stored; it serves seqs() and the
//               per-agent range scans. Then (v5) the agent's clock when it built the batch
//               (Batch.clock): clock_synchronised (0/1), clock_estimated_error_ns,
//               clock_maximum_error_ns, clock_source (wire::ClockSource); NULL when the batch
//               carried none (an older agent).
//   latency_D   one row per Batch.latency entry; its id is (batch id << 24) + its position in the
//               batch (which rtt_D.target_index refers to), so a batch's summaries are one
//               contiguous id range and need no index; target is targets.id; every
//               LatencySummary field, timestamp_source as the wire value (0 userspace,
//               1 kernel), the histogram as a BLOB (see decode_histogram_blob). Then (v5) the
//               one-way delay (LatencySummary.one_way): one_way_status (wire::OneWayStatus: 0 not
//               measured, 1 reported, 2 unsynchronised, 3 bound too large), one_way_error_bound_ns,
//               one_way_max_error_fraction, sender_/reflector_synchronised, sender_/reflector_
//               error_ns, one_way_samples, forward_/backward_ min/p50/p90/p99/max_ns (0 unless
//               reported), one_way_histogram_scheme, forward_/backward_histogram (BLOBs as above);
//               all NULL when the summary carried no one_way (an older agent); and stamp_ssid
//               (NULL unless STAMP).
//   load_D      one row per Batch.load entry, id as above: the all-CPU total (cpu == -1) as
//               columns, cpu_busy = 1 - idle - iowait of that total, memory, load averages, PSI
//               (NULL where the kernel lacks PSI, i.e. the wire value is negative); per-CPU usage,
//               interfaces and temperatures as compact JSON arrays (cpus_json, net_json,
//               temperatures_json): those lists are variable-length, read whole per sample and
//               rarely filtered, and a child row per CPU per second would multiply the row count
//               by the core count; json_each()/json_extract() still reach into them.
//   rtt_D       the optional raw round trips, id as above.
//   self_D      the agent's self-metrics (Batch.self), keyed by the batch id.
//
// Views with the v2 names and columns span every partition and resolve the ids to text, for
// operators and scripts: batches, latency_summaries, load_samples, rtt_samples, agent_self
// (e.g. SELECT * FROM latency_summaries WHERE agent_id = 'fra1-edge-07' AND target LIKE 'ams%');
// each ends with an `incarnation` column (32 hex digits) that, with agent_id and seq, names a batch.
// In them one_way_status and clock_source are text ('reported', 'bound_too_large', 'chrony', ...).
// They are rebuilt whenever a partition is created or dropped. A query on one day is faster on
// that day's tables directly.
struct OpenOptions {
  // `vantage-collector query` reads a live database: read-only keeps it from ever taking the
  // write lock or migrating the schema under a running collector.
  bool read_only = false;
  int busy_timeout_ms = 5000;
  // Day partitions wholly older than this many days (by the wall clock) are dropped: at open and
  // then at most once a minute from store(). 0 keeps everything. A batch whose partition is
  // already past the limit when it arrives is acked as stored but not written (counted in
  // expired_on_arrival()): writing it would recreate a partition only to drop it again.
  int retention_days = 30;
  // SQLite's page cache for this connection, KiB.
  int cache_kib = 64 * 1024;
  // The wall clock retention runs on (ns since the epoch); null: CLOCK_REALTIME. For tests.
  std::int64_t (*wall_clock_ns)() = nullptr;
};

// One interval of one agent's (target, protocol): what the latest-latency and the pair-history
// queries both return.
struct IntervalFigures {
  std::string agent_id;
  std::string protocol;
  std::uint64_t seq = 0;
  std::int64_t interval_end_ns = 0;
  std::uint32_t sent = 0;
  std::uint32_t received = 0;
  std::uint32_t lost = 0;
  double loss_ratio = 0.0;  // lost / (received + lost), 0 when neither
  std::int64_t p50_ns = 0;
  std::int64_t p99_ns = 0;
};

// Latest summary per (agent, target).
struct LatestLatency : IntervalFigures {
  std::string region;
  std::string pop;
  std::string target;
  double jitter_mean_ns = 0.0;
  std::int64_t jitter_p99_ns = 0;
  // One-way delay: the wire::OneWayStatus value, absent when the summary carried none; the
  // medians are 0 unless it is 1 (reported).
  std::optional<int> one_way_status;
  std::int64_t forward_p50_ns = 0;
  std::int64_t backward_p50_ns = 0;
};

// Latest load sample per PoP (from whichever of its agents sampled last).
struct LatestLoad {
  std::string pop;
  std::string agent_id;
  std::int64_t time_ns = 0;
  std::optional<double> cpu_busy;
  std::optional<std::int64_t> mem_total;
  std::optional<std::int64_t> mem_available;
  std::optional<double> load1;
  std::optional<double> psi_cpu_some;
};

// An agent's self-metrics as of one batch (see AgentSelf in telemetry.fbs).
struct AgentSelfRow : wire::AgentSelfValues {
  std::uint64_t seq = 0;
};

struct AgentSummary {
  std::string agent_id;
  std::string region;
  std::string pop;
  std::string incarnation;  // the newest incarnation's 32 hex digits (all zero: legacy)
  std::uint64_t max_seq = 0;  // the highest seq stored under that incarnation
  std::int64_t batch_count = 0;
  std::int64_t first_seen_ns = 0;
  std::int64_t last_seen_ns = 0;
  std::uint64_t spool_dropped = 0;   // as reported in the agent's newest batch
  std::optional<AgentSelfRow> self;  // from the newest batch that carried self-metrics
};

// What identifies a stored batch besides its agent.
struct BatchKey {
  Incarnation incarnation{};
  std::uint64_t seq = 0;
  friend bool operator==(const BatchKey&, const BatchKey&) = default;
};

// One interval of one (source, target) pair, for a drill-down.
struct PairPoint : IntervalFigures {
  std::int64_t interval_start_ns = 0;
};

// The source is one agent (agent_id) or every agent whose batches were filed under a PoP (pop,
// when agent_id is empty). The target is matched by name under every protocol unless protocol
// names one. Intervals with from_ns <= interval_end_ns < to_ns.
struct PairHistoryQuery {
  std::string_view agent_id;
  std::string_view pop;
  std::string_view target;
  std::string_view protocol;  // "udp_echo", ...; empty: all
  std::int64_t from_ns = 0;
  std::int64_t to_ns = 0;
};

// Histogram BLOB layout: the non-empty buckets in wire order, each as two
// varints (7 bits a byte, low first, high bit set on all but the last byte): the bucket index as
// a zigzag-encoded delta from the previous bucket's index (from 0 for the first), then the count.
// Typically 2-3 bytes a bucket. NULL when there are none. decode_histogram_blob() reads it.
std::vector<std::pair<std::uint16_t, std::uint32_t>> decode_histogram_blob(std::string_view blob);

// A partition holds one UTC day of interval_end_ns: day = floor(interval_end_ns / kPartitionNs).
inline constexpr std::int64_t kPartitionNs = 86'400'000'000'000;

class SqliteStore {
 public:
  static constexpr int kSchemaVersion = 5;  // PRAGMA user_version

  // Opens or creates the database and brings its schema to kSchemaVersion in one transaction (a
  // crash leaves it as it was): a version 1 or 2 database is copied into the partitioned layout,
  // a version 3 one gains the incarnation (its batches are all under the legacy one), a version 4
  // one the clock and one-way columns (NULL in its rows). Then drops
  // expired partitions (not read-only).
  static Result<SqliteStore> open(const std::string& path, const OpenOptions& options = {});

  SqliteStore(SqliteStore&&) noexcept;
  SqliteStore& operator=(SqliteStore&&) noexcept;
  ~SqliteStore();

  // Stores the batches in ONE transaction (group commit: the fsync is paid once per call) and
  // returns one outcome per batch, in order. On any error everything is rolled back and the
  // error returned; the caller answers RetryLater. Not thread-safe: one owning thread.
  Result<std::vector<StoreOutcome>> store(std::span<const IncomingBatch> batches);

  // Time spent in COMMIT (the durable write) and in the whole transaction of the last store()
  // that committed; a failed store() leaves both unchanged (it committed nothing).
  std::int64_t last_commit_ns() const noexcept;
  std::int64_t last_store_ns() const noexcept;

  // Drops every partition wholly older than retention_days before now_ns (wall clock) and returns
  // how many it dropped; 0 when retention is off. store() calls it itself once a minute.
  std::size_t drop_expired(std::int64_t now_ns);
  // Batches acked without being written because their partition had already expired.
  std::uint64_t expired_on_arrival() const noexcept;
  // The partitions present, as days since the epoch (UTC), ascending.
  Result<std::vector<std::int64_t>> partition_days();

  Result<std::vector<LatestLatency>> latest_latency();
  Result<std::vector<LatestLoad>> latest_load_per_pop();
  Result<std::vector<AgentSummary>> agents();
  // Every stored seq of the agent, ascending, under every incarnation (a seq stored under two
  // incarnations appears twice).
  Result<std::vector<std::uint64_t>> seqs(std::string_view agent_id);
  // Every stored batch key of the agent, by incarnation in order of first arrival, then seq.
  Result<std::vector<BatchKey>> batch_keys(std::string_view agent_id);
  // One pair's intervals in a time range, by interval_end_ns then agent.
  Result<std::vector<PairPoint>> pair_history(const PairHistoryQuery& query);
  // The same intervals handed to `each` one at a time, in no particular order, none of them held:
  // a long range over a busy PoP costs what the caller keeps of them. The point is only valid
  // during the call.
  platform::Status pair_history(const PairHistoryQuery& query, const std::function<void(const PairPoint&)>& each);

  const std::string& path() const noexcept;
  // The SQLite library's version, for --version.
  static const char* library_version() noexcept;

 private:
  struct Impl;
  explicit SqliteStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector::store
