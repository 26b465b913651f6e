// The collector's SQLite store: verified telemetry batches in, one durable transaction per group
// of batches, idempotent by (agent, seq); plus the read side for `vantage-collector query`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vantage/telemetry_generated.h"

struct sqlite3;
struct sqlite3_stmt;

namespace vantage::collector::store {

// Tables, as operators query them (times are ns since the Unix epoch unless named otherwise;
// `seq` is the agent's u64 sequence number stored as its two's-complement int64 bit pattern, so
// ordering is by value for every seq below 2^63, which a one-per-second counter never reaches).
//
//   agents            one row per agent identity: region, pop, arch, software_version (the last
//                     non-empty values seen), first_seen_ns (kept), last_seen_ns (collector
//                     receive time of the newest batch).
//   batches           one row per (agent_id, seq): the interval, when the collector received it,
//                     the region/pop it was filed under, how many children it had, and the
//                     agent's spool_dropped counter (batches its spool discarded, cumulative). The
//                     primary key is what makes delivery idempotent: a batch resent with the same
//                     (agent, seq) is acked again but never stored twice. If the content differs,
//                     the first one stored wins; the agent never reuses a seq, so a differing
//                     resend means a broken agent, and keeping the committed copy is the only
//                     choice that does not rewrite data that was already acked and read.
//   latency_summaries one row per Batch.latency entry (idx = its position, which
//                     rtt_samples.target_index refers to): every LatencySummary field, with the
//                     histogram as a BLOB (see kHistogramBlob) and the batch interval copied in
//                     so the (agent_id, target, interval_end_ns) index answers "latest" queries.
//   load_samples      one row per Batch.load entry: the all-CPU total (cpu == -1) as columns,
//                     cpu_busy = 1 - idle - iowait of that total, memory, load averages, PSI
//                     (NULL where the kernel lacks PSI, i.e. the wire value is negative); per-CPU
//                     usage, interfaces and temperatures as compact JSON arrays (cpus_json,
//                     net_json, temperatures_json). JSON rather than child tables: those lists are
//                     variable-length, read whole per sample and rarely filtered, and a child row
//                     per CPU per second would multiply the row count (and the write cost of
//                     every commit) by the core count; SQLite's json_each()/json_extract() still
//                     reach into them when an operator needs to.
//   rtt_samples       the optional raw round trips, one row each.
//   agent_self        (schema v2) one row per batch that carries the agent's self-metrics
//                     (Batch.self: RSS, CPU time, ring and spool figures, reconnects, TLS
//                     failures, config generation), with the batch's interval_end_ns.
//
// Children reference batches(agent_id, seq) with ON DELETE CASCADE, so retention is a DELETE on
// batches.
struct IncomingBatch {
  const vantage::wire::Batch* batch = nullptr;  // passed the FlatBuffers Verifier; not null
  // Identity from the connection (client certificate / Hello), not from the batch's own fields:
  // that is what the collector authenticated. An empty region or pop falls back to the batch's.
  std::string_view agent_id;
  std::string_view region;
  std::string_view pop;
  std::string_view arch;              // from Hello; empty keeps the stored value
  std::string_view software_version;  // from Hello; empty keeps the stored value
  std::int64_t received_ns = 0;       // collector wall clock
  // The verified Frame (without its length prefix) that holds `batch`, for sinks that forward
  // the bytes as they arrived (JetStream); SQLite stores fields and ignores it.
  std::span<const std::uint8_t> frame;
};

enum class StoreOutcome : std::uint8_t {
  kStored,     // committed by this call
  kDuplicate,  // (agent, seq) was already stored: ack it as stored, nothing written
  kFailed,     // not stored (a sink that stores batches one by one): the agent retries it
};

// A value or an error message (which names the database path and SQLite's message).
template <typename T>
struct [[nodiscard]] Result {
  std::optional<T> value;
  std::string error;

  explicit operator bool() const noexcept { return value.has_value(); }
};

struct OpenOptions {
  // `vantage-collector query` reads a live database: read-only keeps it from ever taking the
  // write lock or migrating the schema under a running collector.
  bool read_only = false;
  int busy_timeout_ms = 5000;
};

// Latest summary per (agent, target).
struct LatestLatency {
  std::string agent_id;
  std::string region;
  std::string pop;
  std::string target;
  std::string protocol;
  std::uint64_t seq = 0;
  std::int64_t interval_end_ns = 0;
  std::uint32_t sent = 0;
  std::uint32_t received = 0;
  std::uint32_t lost = 0;
  double loss_ratio = 0.0;  // lost / (received + lost), 0 when neither
  std::int64_t p50_ns = 0;
  std::int64_t p99_ns = 0;
  double jitter_mean_ns = 0.0;
  std::int64_t jitter_p99_ns = 0;
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
struct AgentSelfRow {
  std::uint64_t seq = 0;
  std::int64_t process_start_ns = 0;
  std::uint64_t config_generation = 0;
  std::uint64_t rss_bytes = 0;
  std::uint64_t cpu_user_ns = 0;
  std::uint64_t cpu_system_ns = 0;
  std::uint64_t probe_ring_dropped = 0;
  std::uint64_t load_ring_dropped = 0;
  std::uint64_t spool_records = 0;
  std::uint64_t spool_bytes = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t connect_failures = 0;
  std::uint64_t tls_failures = 0;
  std::uint64_t rejected = 0;
};

struct AgentSummary {
  std::string agent_id;
  std::string region;
  std::string pop;
  std::uint64_t max_seq = 0;
  std::int64_t batch_count = 0;
  std::int64_t first_seen_ns = 0;
  std::int64_t last_seen_ns = 0;
  std::uint64_t spool_dropped = 0;   // as reported in the agent's newest batch
  std::optional<AgentSelfRow> self;  // from the newest batch that carried self-metrics
};

// Histogram BLOB layout: the non-empty buckets in wire order, 6 bytes each: u16 index then u32
// count, both little-endian, packed. Written field by field rather than copying the FlatBuffers
// struct, whose 2 padding bytes are whatever the sender put there. NULL when there are none.
inline constexpr std::size_t kHistogramBucketBytes = 6;

// The protocol as every view of the data names it: "udp_echo", "tcp_connect", "icmp"; a newer
// agent's protocol is "unknown" (stored and labelled, not lost).
const char* protocol_name(vantage::wire::Protocol protocol) noexcept;

class SqliteStore {
 public:
  static constexpr int kSchemaVersion = 2;  // PRAGMA user_version

  // Opens or creates the database and brings its schema to kSchemaVersion.
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
  std::int64_t last_commit_ns() const noexcept { return last_commit_ns_; }
  std::int64_t last_store_ns() const noexcept { return last_store_ns_; }

  Result<std::vector<LatestLatency>> latest_latency();
  Result<std::vector<LatestLoad>> latest_load_per_pop();
  Result<std::vector<AgentSummary>> agents();
  // Every stored seq of the agent, ascending.
  Result<std::vector<std::uint64_t>> seqs(std::string_view agent_id);

  const std::string& path() const noexcept { return path_; }

 private:
  struct DbCloser {
    void operator()(sqlite3* db) const noexcept;
  };
  struct StmtFinalizer {
    void operator()(sqlite3_stmt* stmt) const noexcept;
  };
  using Db = std::unique_ptr<sqlite3, DbCloser>;
  using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

  SqliteStore(std::string path, Db db);

  std::string error(std::string_view what) const;
  std::string prepare_all();
  std::string store_one(const IncomingBatch& in, StoreOutcome& outcome);

  std::string path_;
  Db db_;  // declared before the statements: destroyed after them
  Stmt begin_, commit_, rollback_;
  Stmt upsert_agent_, insert_batch_, insert_latency_, insert_load_, insert_rtt_, insert_self_;
  std::int64_t last_commit_ns_ = 0;
  std::int64_t last_store_ns_ = 0;
};

}  // namespace vantage::collector::store
