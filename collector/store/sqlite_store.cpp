// SqliteStore: the time-partitioned schema, migration from v1/v2, the group-commit write path with
// in-memory dictionaries, retention, and the operator queries.
#include "collector/store/sqlite_store.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "platform/byte_order.hpp"
#include "platform/clock.hpp"
#include "platform/json_writer.hpp"
#include "platform/result.hpp"
#include "schemas/agent_self_fields.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector::store {

namespace wire = vantage::wire;

namespace {

// A child row's id is (batch id << kChildShift) + its position in the batch's vector, so a
// batch's children are one contiguous id range (found without an index) and ids grow in insert
// order (appends at the right edge of the b-tree). Batch ids stay below 2^39 per day partition.
constexpr int kChildShift = 24;
constexpr std::int64_t kMaxChildren = std::int64_t{1} << kChildShift;
constexpr std::int64_t kChildMask = kMaxChildren - 1;

constexpr std::int64_t kSecondNs = 1'000'000'000;
constexpr std::int64_t kRetentionCheckNs = 60 * kSecondNs;

std::int64_t day_of(std::int64_t ns) {
  return ns >= 0 ? ns / kPartitionNs : -((-(ns + 1)) / kPartitionNs) - 1;
}

// "d20260921": the partition's tables are batches_d20260921, latency_d20260921, ...
std::string partition_name(std::int64_t day) {
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{day}}};
  char buf[32];
  std::snprintf(buf, sizeof buf, "d%04d%02u%02u", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  return buf;
}

std::string subst(std::string_view tmpl, std::string_view name) {
  std::string out;
  out.reserve(tmpl.size() + 64);
  for (std::size_t i = 0; i < tmpl.size();) {
    if (tmpl.compare(i, 3, "{P}") == 0) {
      out += name;
      i += 3;
    } else {
      out += tmpl[i++];
    }
  }
  return out;
}

// Version 4, the dictionaries (see the header for what each column means). Version 3 lacked the
// incarnations table and agents.incarnation (kSchemaV4Additions, also its migration).
constexpr const char* kSchemaV4Dictionaries = R"sql(
CREATE TABLE agents(
  id                     INTEGER PRIMARY KEY,
  agent_id               TEXT NOT NULL UNIQUE,
  region                 TEXT NOT NULL,
  pop                    TEXT NOT NULL,
  arch                   TEXT NOT NULL DEFAULT '',
  software_version       TEXT NOT NULL DEFAULT '',
  first_seen_ns          INTEGER NOT NULL,
  last_seen_ns           INTEGER NOT NULL,
  batch_count            INTEGER NOT NULL DEFAULT 0,
  max_seq                INTEGER,
  spool_dropped          INTEGER NOT NULL DEFAULT 0,
  latest_day             INTEGER,
  latest_batch           INTEGER,
  latest_interval_end_ns INTEGER,
  latest_seq             INTEGER,
  load_day               INTEGER,
  load_row               INTEGER,
  load_time_ns           INTEGER,
  load_seq               INTEGER,
  self_day               INTEGER,
  self_batch             INTEGER,
  self_seq               INTEGER
);
CREATE TABLE targets(
  id       INTEGER PRIMARY KEY,
  name     TEXT NOT NULL,
  protocol TEXT NOT NULL,
  UNIQUE (name, protocol)
);
CREATE TABLE pairs(
  agent                INTEGER NOT NULL,
  target               INTEGER NOT NULL,
  best_day             INTEGER,
  best_batch           INTEGER,
  best_idx             INTEGER,
  best_interval_end_ns INTEGER,
  best_seq             INTEGER,
  best_sent            INTEGER,
  PRIMARY KEY (agent, target)
) WITHOUT ROWID;
CREATE TABLE partitions(
  day        INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  created_ns INTEGER NOT NULL
);
)sql";

// What version 4 added to the version 3 dictionaries. Id 0 is the legacy incarnation (all zero
// bytes: agents that send none), which is what every batch of a migrated database is under: its
// DEFAULT makes the new batches_D column an O(1) ALTER TABLE, no row rewritten.
constexpr const char* kSchemaV4Additions = R"sql(
CREATE TABLE incarnations(
  id            INTEGER PRIMARY KEY,
  incarnation   BLOB NOT NULL UNIQUE,
  first_seen_ns INTEGER NOT NULL
);
INSERT INTO incarnations VALUES (0, zeroblob(16), 0);
ALTER TABLE agents ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
)sql";

// The batch key: what makes a batch unique (delivery is idempotent on it). `incarnation` is an
// incarnations.id: the agent's spool incarnation, so a reinstalled agent's seq 1 is a new batch.
constexpr const char* kBatchKeyColumns = "agent, incarnation, seq";

// One day partition. Plain rowid tables, no secondary index but the batch key: the data is
// appended in arrival order and reached through batches_{P} (see kChildShift).
constexpr const char* kPartitionDdl = R"sql(
CREATE TABLE batches_{P}(
  id                INTEGER PRIMARY KEY,
  agent             INTEGER NOT NULL,
  seq               INTEGER NOT NULL,
  interval_start_ns INTEGER NOT NULL,
  interval_end_ns   INTEGER NOT NULL,
  received_ns       INTEGER NOT NULL,
  region            TEXT NOT NULL,
  pop               TEXT NOT NULL,
  latency_count     INTEGER NOT NULL,
  load_count        INTEGER NOT NULL,
  rtt_sample_count  INTEGER NOT NULL,
  spool_dropped     INTEGER NOT NULL,
  incarnation       INTEGER NOT NULL DEFAULT 0{BATCH_V5}
);
CREATE UNIQUE INDEX batches_{P}_key ON batches_{P}({KEY});
CREATE TABLE latency_{P}(
  id INTEGER PRIMARY KEY, target INTEGER, sent INTEGER, received INTEGER, lost INTEGER, late INTEGER,
  reordered INTEGER, duplicates INTEGER, lost_outbound INTEGER, lost_inbound INTEGER, min_ns INTEGER,
  max_ns INTEGER, mean_ns REAL, stddev_ns REAL, p50_ns INTEGER, p90_ns INTEGER, p99_ns INTEGER,
  p999_ns INTEGER, jitter_mean_ns REAL, jitter_p99_ns INTEGER, timestamp_source INTEGER,
  histogram_scheme INTEGER, histogram BLOB, send_errors INTEGER, unexpected INTEGER, invalid INTEGER,
  reflector_restarts INTEGER, session_resets INTEGER, ipdv_count INTEGER, histogram_overflow INTEGER,
  histogram_dropped INTEGER{LATENCY_V5}
);
CREATE TABLE load_{P}(
  id INTEGER PRIMARY KEY, time_ns INTEGER, arch TEXT, cpu_user REAL, cpu_system REAL, cpu_iowait REAL,
  cpu_steal REAL, cpu_irq REAL, cpu_softirq REAL, cpu_idle REAL, cpu_busy REAL, cpu_count INTEGER,
  mem_total INTEGER, mem_available INTEGER, mem_dirty INTEGER, swap_total INTEGER, swap_free INTEGER,
  load1 REAL, load5 REAL, load15 REAL, psi_cpu_some REAL, psi_memory_some REAL, psi_memory_full REAL,
  psi_io_some REAL, psi_io_full REAL, cpus_json TEXT, net_json TEXT, temperatures_json TEXT
);
CREATE TABLE rtt_{P}(
  id INTEGER PRIMARY KEY, target_index INTEGER, probe_seq INTEGER, send_time_ns INTEGER, rtt_ns INTEGER
);
{PATH}
{SELF}
)sql";

// Columns version 5 appended (one-way delay): in a partition's DDL and, for the partitions of a
// version 4 database, by ALTER TABLE ADD COLUMN (migrate_v4), so both have them in this order at
// the end. NULL where the batch or summary did not carry the table (an older agent): "not known",
// unlike a status of 0, which an agent that knows one-way delay sends when it could not measure it.
struct AddedColumn {
  const char* name;
  const char* type;
};
// batches_{P}: Batch.clock, the agent's clock when it built the batch; clock_source as the wire
// value (wire::ClockSource).
constexpr AddedColumn kBatchV5Columns[] = {{"clock_synchronised", "INTEGER"},
                                           {"clock_estimated_error_ns", "INTEGER"},
                                           {"clock_maximum_error_ns", "INTEGER"},
                                           {"clock_source", "INTEGER"}};
// latency_{P}: LatencySummary.one_way (status as wire::OneWayStatus; the figures are 0 unless it
// is 1, Reported; histograms as the histogram column) and stamp_ssid.
constexpr AddedColumn kLatencyV5Columns[] = {{"one_way_status", "INTEGER"},
                                             {"one_way_error_bound_ns", "INTEGER"},
                                             {"one_way_max_error_fraction", "REAL"},
                                             {"sender_synchronised", "INTEGER"},
                                             {"reflector_synchronised", "INTEGER"},
                                             {"sender_error_ns", "INTEGER"},
                                             {"reflector_error_ns", "INTEGER"},
                                             {"one_way_samples", "INTEGER"},
                                             {"forward_min_ns", "INTEGER"},
                                             {"forward_p50_ns", "INTEGER"},
                                             {"forward_p90_ns", "INTEGER"},
                                             {"forward_p99_ns", "INTEGER"},
                                             {"forward_max_ns", "INTEGER"},
                                             {"backward_min_ns", "INTEGER"},
                                             {"backward_p50_ns", "INTEGER"},
                                             {"backward_p90_ns", "INTEGER"},
                                             {"backward_p99_ns", "INTEGER"},
                                             {"backward_max_ns", "INTEGER"},
                                             {"one_way_histogram_scheme", "INTEGER"},
                                             {"forward_histogram", "BLOB"},
                                             {"backward_histogram", "BLOB"},
                                             {"stamp_ssid", "INTEGER"}};
constexpr std::size_t kLatencyV4ColumnCount = 31;

template <std::size_t N>
std::string added_columns_ddl(const AddedColumn (&columns)[N]) {
  std::string ddl;
  for (const AddedColumn& c : columns) ddl += std::string(", ") + c.name + " " + c.type;
  return ddl;
}

// path_{P}: a latency summary's ECMP paths (wire::PathStats), only for targets probed over more
// than one. A row's id is (its latency_{P} row id << kPathShift) + path, so a summary's paths
// are the id range of its own id, found without an index. Partitions made before it get the
// table from ensure_path_tables().
constexpr int kPathShift = 6;
constexpr std::int64_t kMaxPaths = std::int64_t{1} << kPathShift;  // the agent's bound, 64
constexpr const char* kPathTableDdl = R"sql(
CREATE TABLE IF NOT EXISTS path_{P}(
  id INTEGER PRIMARY KEY, path INTEGER, source_port INTEGER, sent INTEGER, received INTEGER, lost INTEGER,
  min_ns INTEGER, mean_ns INTEGER, max_ns INTEGER
);)sql";

// self_{P}: the batch id, then one INTEGER column per AgentSelf field (schemas/agent_self_fields.hpp).
// A field added since a partition was made is added to it by ensure_self_columns().
std::string self_table_ddl() {
  std::string ddl = "CREATE TABLE self_{P}(batch INTEGER PRIMARY KEY";
  for (const wire::AgentSelfField& f : wire::kAgentSelfFields) {
    ddl += std::string(", ") + f.name + " INTEGER";
  }
  return ddl + ");";
}

std::string partition_ddl() {
  std::string ddl = kPartitionDdl;
  ddl.replace(ddl.find("{SELF}"), 6, self_table_ddl());
  ddl.replace(ddl.find("{PATH}"), 6, kPathTableDdl);
  ddl.replace(ddl.find("{BATCH_V5}"), 10, added_columns_ddl(kBatchV5Columns));
  ddl.replace(ddl.find("{LATENCY_V5}"), 12, added_columns_ddl(kLatencyV5Columns));
  return ddl;
}

// --- operator views: the v2 tables' names and columns over every partition -------------------

struct ViewColumn {
  const char* name;
  const char* expr;
};

struct ViewDef {
  const char* name;
  std::vector<ViewColumn> columns;
  std::string from;  // with {P}
};

// Every view ends with the batch's incarnation as 32 hex digits (all zero: legacy), which with
// agent_id and seq names the batch.
constexpr const char* kIncarnationHex = "lower(hex(i.incarnation))";
constexpr std::string_view kJoinIncarnation = " JOIN incarnations AS i ON i.id = b.incarnation";

// The enums' names as the wire schema spells them, in snake case; NULL stays NULL (not carried).
constexpr const char* kClockSourceText =
    "CASE WHEN b.clock_source IS NULL THEN NULL WHEN b.clock_source = 1 THEN 'chrony' WHEN b.clock_source = 2 "
    "THEN 'ntpd' WHEN b.clock_source = 3 THEN 'timesyncd' WHEN b.clock_source = 4 THEN 'ptp' "
    "WHEN b.clock_source = 5 THEN 'pps' WHEN b.clock_source = 6 THEN 'configured' ELSE 'unknown' END";
constexpr const char* kOneWayStatusText =
    "CASE l.one_way_status WHEN 0 THEN 'not_measured' WHEN 1 THEN 'reported' WHEN 2 THEN 'unsynchronised' "
    "WHEN 3 THEN 'bound_too_large' ELSE NULL END";

const std::vector<ViewDef>& view_defs() {
  static const std::vector<ViewDef> defs = [] {
    std::vector<ViewDef> v;
    v.push_back({"batches",
                 {{"agent_id", "a.agent_id"},
                  {"seq", "b.seq"},
                  {"interval_start_ns", "b.interval_start_ns"},
                  {"interval_end_ns", "b.interval_end_ns"},
                  {"received_ns", "b.received_ns"},
                  {"region", "b.region"},
                  {"pop", "b.pop"},
                  {"latency_count", "b.latency_count"},
                  {"load_count", "b.load_count"},
                  {"rtt_sample_count", "b.rtt_sample_count"},
                  {"spool_dropped", "b.spool_dropped"},
                  {"clock_synchronised", "b.clock_synchronised"},
                  {"clock_estimated_error_ns", "b.clock_estimated_error_ns"},
                  {"clock_maximum_error_ns", "b.clock_maximum_error_ns"},
                  {"clock_source", kClockSourceText},
                  {"incarnation", kIncarnationHex}},
                 "batches_{P} AS b JOIN agents AS a ON a.id = b.agent" + std::string(kJoinIncarnation)});
    std::vector<ViewColumn> lat{{"agent_id", "a.agent_id"},
                                {"seq", "b.seq"},
                                {"idx", "l.id & 16777215"},
                                {"target", "t.name"},
                                {"protocol", "t.protocol"}};
    for (const char* c : {"sent", "received", "lost", "late", "reordered", "duplicates", "lost_outbound",
                          "lost_inbound", "min_ns", "max_ns", "mean_ns", "stddev_ns", "p50_ns", "p90_ns",
                          "p99_ns", "p999_ns", "jitter_mean_ns", "jitter_p99_ns"}) {
      lat.push_back({c, nullptr});
    }
    lat.push_back({"timestamp_source",
                   "CASE l.timestamp_source WHEN 0 THEN 'userspace' WHEN 1 THEN 'kernel' ELSE 'unknown' END"});
    for (const char* c : {"histogram_scheme", "histogram", "send_errors", "unexpected", "invalid",
                          "reflector_restarts", "session_resets", "ipdv_count", "histogram_overflow",
                          "histogram_dropped"}) {
      lat.push_back({c, nullptr});
    }
    for (const AddedColumn& c : kLatencyV5Columns) {
      lat.push_back({c.name, std::string_view(c.name) == "one_way_status" ? kOneWayStatusText : nullptr});
    }
    lat.push_back({"interval_start_ns", "b.interval_start_ns"});
    lat.push_back({"interval_end_ns", "b.interval_end_ns"});
    lat.push_back({"incarnation", kIncarnationHex});
    v.push_back({"latency_summaries", lat,
                 "latency_{P} AS l JOIN batches_{P} AS b ON b.id = l.id >> 24 JOIN agents AS a ON a.id = b.agent "
                 "JOIN targets AS t ON t.id = l.target" + std::string(kJoinIncarnation)});
    std::vector<ViewColumn> load{{"agent_id", "a.agent_id"}, {"seq", "b.seq"}, {"idx", "l.id & 16777215"}};
    for (const char* c : {"time_ns", "arch", "cpu_user", "cpu_system", "cpu_iowait", "cpu_steal", "cpu_irq",
                          "cpu_softirq", "cpu_idle", "cpu_busy", "cpu_count", "mem_total", "mem_available",
                          "mem_dirty", "swap_total", "swap_free", "load1", "load5", "load15", "psi_cpu_some",
                          "psi_memory_some", "psi_memory_full", "psi_io_some", "psi_io_full", "cpus_json",
                          "net_json", "temperatures_json"}) {
      load.push_back({c, nullptr});
    }
    load.push_back({"incarnation", kIncarnationHex});
    v.push_back({"load_samples", load,
                 "load_{P} AS l JOIN batches_{P} AS b ON b.id = l.id >> 24 JOIN agents AS a ON a.id = b.agent" +
                     std::string(kJoinIncarnation)});
    v.push_back({"rtt_samples",
                 {{"agent_id", "a.agent_id"},
                  {"seq", "b.seq"},
                  {"idx", "l.id & 16777215"},
                  {"target_index", nullptr},
                  {"probe_seq", nullptr},
                  {"send_time_ns", nullptr},
                  {"rtt_ns", nullptr},
                  {"incarnation", kIncarnationHex}},
                 "rtt_{P} AS l JOIN batches_{P} AS b ON b.id = l.id >> 24 JOIN agents AS a ON a.id = b.agent" +
                     std::string(kJoinIncarnation)});
    std::vector<ViewColumn> self{{"agent_id", "a.agent_id"}, {"seq", "b.seq"}, {"interval_end_ns", "b.interval_end_ns"}};
    for (const wire::AgentSelfField& f : wire::kAgentSelfFields) {
      self.push_back({f.name, nullptr});
    }
    self.push_back({"incarnation", kIncarnationHex});
    v.push_back({"latency_paths",
                 {{"agent_id", "a.agent_id"},
                  {"seq", "b.seq"},
                  {"idx", "(l.id >> 6) & 16777215"},
                  {"target", "t.name"},
                  {"protocol", "t.protocol"},
                  {"path", nullptr},
                  {"source_port", nullptr},
                  {"sent", nullptr},
                  {"received", nullptr},
                  {"lost", nullptr},
                  {"min_ns", nullptr},
                  {"mean_ns", nullptr},
                  {"max_ns", nullptr},
                  {"interval_start_ns", "b.interval_start_ns"},
                  {"interval_end_ns", "b.interval_end_ns"},
                  {"incarnation", kIncarnationHex}},
                 "path_{P} AS l JOIN latency_{P} AS s ON s.id = l.id >> 6 JOIN batches_{P} AS b ON b.id = l.id >> 30 "
                 "JOIN agents AS a ON a.id = b.agent JOIN targets AS t ON t.id = s.target" +
                     std::string(kJoinIncarnation)});
    v.push_back({"agent_self", self,
                 "self_{P} AS l JOIN batches_{P} AS b ON b.id = l.batch JOIN agents AS a ON a.id = b.agent" +
                     std::string(kJoinIncarnation)});
    return v;
  }();
  return defs;
}

// DROP and CREATE of every view for this partition list. SQLite caps a compound SELECT at 500
// terms, so long lists are UNION ALLs of nested chunks.
std::string views_sql(const std::vector<std::string>& partitions) {
  std::string sql;
  for (const ViewDef& v : view_defs()) {
    sql += "DROP VIEW IF EXISTS ";
    sql += v.name;
    sql += ";CREATE VIEW ";
    sql += v.name;
    sql += " AS ";
    const auto select_list = [&](bool empty) {
      std::string s = "SELECT ";
      for (std::size_t i = 0; i < v.columns.size(); ++i) {
        if (i > 0) s += ", ";
        if (empty) {
          s += "NULL";
        } else if (v.columns[i].expr != nullptr) {
          s += v.columns[i].expr;
        } else {
          s += "l.";
          s += v.columns[i].name;
        }
        s += " AS ";
        s += v.columns[i].name;
      }
      return s;
    };
    if (partitions.empty()) {
      sql += select_list(true) + " WHERE 0";
    } else {
      const std::string head = select_list(false) + " FROM ";
      constexpr std::size_t kChunk = 200;
      for (std::size_t c = 0; c < partitions.size(); c += kChunk) {
        if (c > 0) sql += " UNION ALL ";
        const bool nested = partitions.size() > kChunk;
        if (nested) sql += "SELECT * FROM (";
        for (std::size_t i = c; i < std::min(partitions.size(), c + kChunk); ++i) {
          if (i > c) sql += " UNION ALL ";
          sql += head + subst(v.from, partitions[i]);
        }
        if (nested) sql += ")";
      }
    }
    sql += ";\n";
  }
  return sql;
}

constexpr const char* kInsertBatch = R"sql(
INSERT OR IGNORE INTO batches_{P}(agent, incarnation, seq, interval_start_ns, interval_end_ns, received_ns, region,
                                  pop, latency_count, load_count, rtt_sample_count, spool_dropped,
                                  clock_synchronised, clock_estimated_error_ns, clock_maximum_error_ns, clock_source)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
)sql";

// Every column in table order: the v4 ones, then kLatencyV5Columns.
const std::string& insert_latency_sql() {
  static const std::string sql = [] {
    std::string s = "INSERT INTO latency_{P} VALUES (?1";
    for (std::size_t i = 2; i <= kLatencyV4ColumnCount + std::size(kLatencyV5Columns); ++i) {
      s += ", ?" + std::to_string(i);
    }
    return s + ")";
  }();
  return sql;
}

constexpr const char* kInsertLoad = R"sql(
INSERT INTO load_{P} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
  ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)
)sql";

constexpr const char* kInsertRtt = "INSERT INTO rtt_{P} VALUES (?1, ?2, ?3, ?4, ?5)";
constexpr const char* kInsertPath = "INSERT INTO path_{P} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

// By column name: a partition made by an older collector has its later columns added at the end.
const std::string& insert_self_sql() {
  static const std::string sql = [] {
    std::string columns = "batch", values = "?1";
    for (std::size_t i = 0; i < wire::kAgentSelfFieldCount; ++i) {
      columns += std::string(", ") + wire::kAgentSelfFields[i].name;
      values += ", ?" + std::to_string(i + 2);
    }
    return "INSERT INTO self_{P}(" + columns + ") VALUES (" + values + ")";
  }();
  return sql;
}

constexpr const char* kInsertAgent = R"sql(
INSERT INTO agents(agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
)sql";

constexpr const char* kUpdateAgent = R"sql(
UPDATE agents SET region = ?2, pop = ?3, arch = ?4, software_version = ?5, last_seen_ns = ?6,
  batch_count = ?7, max_seq = ?8, spool_dropped = ?9, latest_day = ?10, latest_batch = ?11,
  latest_interval_end_ns = ?12, latest_seq = ?13, load_day = ?14, load_row = ?15, load_time_ns = ?16,
  load_seq = ?17, self_day = ?18, self_batch = ?19, self_seq = ?20, incarnation = ?21
WHERE id = ?1
)sql";

constexpr const char* kInsertTarget = "INSERT INTO targets(name, protocol) VALUES (?1, ?2)";
constexpr const char* kInsertIncarnation = "INSERT INTO incarnations(incarnation, first_seen_ns) VALUES (?1, ?2)";

constexpr const char* kUpsertPair = R"sql(
INSERT INTO pairs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT(agent, target) DO UPDATE SET best_day = excluded.best_day, best_batch = excluded.best_batch,
  best_idx = excluded.best_idx, best_interval_end_ns = excluded.best_interval_end_ns,
  best_seq = excluded.best_seq, best_sent = excluded.best_sent
)sql";

using platform::realtime_ns;

// Binds parameters left to right and remembers the first failure, so a 31-column insert reads as
// one chain and is checked once.
class Binder {
 public:
  explicit Binder(sqlite3_stmt* stmt) : stmt_(stmt) {}

  Binder& i64(std::int64_t v) { return check(sqlite3_bind_int64(stmt_, ++index_, v)); }
  Binder& u64(std::uint64_t v) { return i64(static_cast<std::int64_t>(v)); }
  Binder& real(double v) {
    // NaN from a broken agent would be stored as NULL by SQLite anyway; say so explicitly.
    if (std::isnan(v)) return null();
    return check(sqlite3_bind_double(stmt_, ++index_, v));
  }
  Binder& null() { return check(sqlite3_bind_null(stmt_, ++index_)); }
  // Text and blobs are bound without copying (destructor nullptr == SQLITE_STATIC): they live in
  // the caller's FlatBuffer or in the store's buffers until the statement has been stepped; the
  // bindings are cleared before store() returns.
  Binder& text(std::string_view v) {
    const char* data = v.data() == nullptr ? "" : v.data();  // a null pointer would bind NULL
    return check(sqlite3_bind_text(stmt_, ++index_, data, static_cast<int>(v.size()), nullptr));
  }
  Binder& bytes(const Incarnation& v) {
    return check(sqlite3_bind_blob(stmt_, ++index_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  Binder& blob(const std::string& v) {
    if (v.empty()) return null();
    return check(sqlite3_bind_blob(stmt_, ++index_, v.data(), static_cast<int>(v.size()), nullptr));
  }
  template <typename T>
  Binder& opt_real(const T* holder, double v) {
    return holder == nullptr ? null() : real(v);
  }
  template <typename T>
  Binder& opt_u64(const T* holder, std::uint64_t v) {
    return holder == nullptr ? null() : u64(v);
  }
  Binder& opt_i64(bool present, std::int64_t v) { return present ? i64(v) : null(); }

  int rc() const { return rc_; }

 private:
  Binder& check(int rc) {
    if (rc_ == SQLITE_OK) rc_ = rc;
    return *this;
  }

  sqlite3_stmt* stmt_;
  int index_ = 0;
  int rc_ = SQLITE_OK;
};

// Steps a statement that returns no rows and leaves it reset (bindings stay until cleared).
int run(sqlite3_stmt* stmt) {
  const int rc = sqlite3_step(stmt);
  sqlite3_reset(stmt);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// What every failed call returns: the message names the database and SQLite's own message.
platform::Status failure(std::string message) {
  return platform::Status::error(std::move(message), platform::Errc::kIo);
}

// --- compact JSON for the per-CPU, interface and temperature lists -----------------------------

template <typename V>
void json_field(std::string& out, const char* name, V v, bool first = false) {
  if (!first) out += ',';
  out += '"';
  out += name;
  out += "\":";
  platform::append_json_number(out, v);
}

// Each writes into `out` (cleared first): the store reuses its buffers across rows.
void cpus_json(std::string& out, const flatbuffers::Vector<const wire::CpuUsage*>* cpus) {
  out.assign("[");
  if (cpus != nullptr) {
    for (const wire::CpuUsage* c : *cpus) {
      if (c->cpu() < 0) continue;  // the total is in the cpu_* columns
      if (out.size() > 1) out += ',';
      out += '{';
      json_field(out, "cpu", std::int64_t{c->cpu()}, true);
      json_field(out, "user", c->user());
      json_field(out, "system", c->system());
      json_field(out, "iowait", c->iowait());
      json_field(out, "steal", c->steal());
      json_field(out, "irq", c->irq());
      json_field(out, "softirq", c->softirq());
      json_field(out, "idle", c->idle());
      json_field(out, "freq_khz", std::int64_t{c->freq_khz()});
      out += '}';
    }
  }
  out += ']';
}

void net_json(std::string& out, const flatbuffers::Vector<flatbuffers::Offset<wire::NetInterface>>* net) {
  out.assign("[");
  if (net != nullptr) {
    for (const wire::NetInterface* n : *net) {
      if (out.size() > 1) out += ',';
      out += "{\"name\":";
      platform::append_json_string(out, wire::str(n->name()));
      if (const wire::NetRates* r = n->rates(); r != nullptr) {
        json_field(out, "rx_bytes_per_s", r->rx_bytes_per_s());
        json_field(out, "tx_bytes_per_s", r->tx_bytes_per_s());
        json_field(out, "rx_packets_per_s", r->rx_packets_per_s());
        json_field(out, "tx_packets_per_s", r->tx_packets_per_s());
        json_field(out, "rx_errors_per_s", r->rx_errors_per_s());
        json_field(out, "tx_errors_per_s", r->tx_errors_per_s());
        json_field(out, "rx_drops_per_s", r->rx_drops_per_s());
        json_field(out, "tx_drops_per_s", r->tx_drops_per_s());
      }
      out += '}';
    }
  }
  out += ']';
}

void temperatures_json(std::string& out,
                       const flatbuffers::Vector<flatbuffers::Offset<wire::Temperature>>* temps) {
  out.assign("[");
  if (temps != nullptr) {
    for (const wire::Temperature* t : *temps) {
      if (out.size() > 1) out += ',';
      out += "{\"sensor\":";
      platform::append_json_string(out, wire::str(t->sensor()));
      json_field(out, "celsius", t->celsius());
      out += '}';
    }
  }
  out += ']';
}

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// The histogram BLOB (see decode_histogram_blob): per bucket, the index as a zigzag varint delta from the previous bucket's (from
// 0 for the first), then the count as a varint. Ascending indices and small counts take 2 bytes
// a bucket instead of 6, which is most of a row: the store writes a third fewer bytes.
void histogram_blob(std::string& out, const flatbuffers::Vector<const wire::HistogramBucket*>* buckets) {
  out.clear();
  if (buckets == nullptr) return;
  std::int64_t previous = 0;
  for (const wire::HistogramBucket* b : *buckets) {
    const std::int64_t delta = std::int64_t{b->index()} - previous;
    previous = b->index();
    put_varint(out, (static_cast<std::uint64_t>(delta) << 1) ^ static_cast<std::uint64_t>(delta >> 63));
    put_varint(out, b->count());
  }
}

// The schema v2 layout (u16 index, u32 count, little-endian, 6 bytes a bucket) re-encoded; for
// migration, as the SQL function vantage_histogram_v3(blob).
void histogram_v3_from_v2(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) != SQLITE_BLOB) {
    sqlite3_result_null(ctx);
    return;
  }
  const auto* p = static_cast<const unsigned char*>(sqlite3_value_blob(argv[0]));
  const std::size_t n = static_cast<std::size_t>(sqlite3_value_bytes(argv[0])) / 6;
  std::string out;
  std::int64_t previous = 0;
  for (std::size_t i = 0; i < n; ++i, p += 6) {
    const std::int64_t index = platform::load_le16(p);
    const std::uint64_t count = platform::load_le32(p + 2);
    const std::int64_t delta = index - previous;
    previous = index;
    put_varint(out, (static_cast<std::uint64_t>(delta) << 1) ^ static_cast<std::uint64_t>(delta >> 63));
    put_varint(out, count);
  }
  if (out.empty()) {
    sqlite3_result_null(ctx);
    return;
  }
  sqlite3_result_blob(ctx, out.data(), static_cast<int>(out.size()), SQLITE_TRANSIENT);
}

// PSI is negative on kernels without it: NULL keeps AVG() and friends honest.
Binder& psi(Binder& b, const wire::Pressure* p, float v) {
  return p == nullptr || v < 0.0f ? b.null() : b.real(static_cast<double>(v));
}

std::string column_text(sqlite3_stmt* stmt, int col) {
  const unsigned char* p = sqlite3_column_text(stmt, col);
  return p == nullptr ? std::string{}
                      : std::string(reinterpret_cast<const char*>(p),
                                    static_cast<std::size_t>(sqlite3_column_bytes(stmt, col)));
}

std::optional<double> column_opt_real(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_double(stmt, col);
}

std::optional<std::int64_t> column_opt_i64(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_int64(stmt, col);
}

// Runs SQL that returns no rows the caller needs (pragmas, DDL, transaction control).
int exec(sqlite3* db, const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr); }
int exec(sqlite3* db, const std::string& sql) { return exec(db, sql.c_str()); }

int query_int(sqlite3* db, const char* sql, std::int64_t& out) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(raw);
  if (rc == SQLITE_ROW) {
    out = sqlite3_column_int64(raw, 0);
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    rc = SQLITE_OK;
  }
  sqlite3_finalize(raw);
  return rc;
}

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

constexpr auto kNoBind = [](sqlite3_stmt*) { return SQLITE_OK; };

// Prepares `sql`, lets `bind` fill its parameters, and calls `row` for each result row.
template <typename Bind, typename Row>
int each_row(sqlite3* db, const std::string& sql, Bind&& bind, Row&& row) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr);
  if (rc != SQLITE_OK) return rc;
  Stmt stmt(raw);
  rc = bind(raw);
  if (rc != SQLITE_OK) return rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) row(raw);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// Steps an already prepared, bound statement through its rows, then resets it.
template <typename Row>
int step_rows(sqlite3_stmt* stmt, Row&& row) {
  int rc = 0;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) row(stmt);
  sqlite3_reset(stmt);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// --- in-memory dictionaries --------------------------------------------------------------------

// Protocols as small codes: the key of a target is (name, protocol as every view names it).

std::uint8_t protocol_code(std::string_view name) {
  constexpr auto kUnknown = static_cast<std::uint8_t>(std::size(kProtocolNames) - 1);
  for (std::uint8_t i = 0; i < kUnknown; ++i) {
    if (name == kProtocolNames[i]) return i;
  }
  return kUnknown;
}

struct TargetView {
  std::string_view name;
  std::uint8_t protocol = 0;
};

struct TargetKey {
  std::string name;
  std::uint8_t protocol = 0;
  operator TargetView() const { return {name, protocol}; }
};

// Heterogeneous lookup: the hot path looks a target up by the string_view into the FlatBuffer.
struct TargetHash {
  using is_transparent = void;
  std::size_t operator()(TargetView v) const noexcept {
    return std::hash<std::string_view>{}(v.name) * 31u + v.protocol;
  }
  std::size_t operator()(const TargetKey& k) const noexcept { return (*this)(TargetView(k)); }
};
struct TargetEq {
  using is_transparent = void;
  bool operator()(TargetView a, TargetView b) const noexcept {
    return a.protocol == b.protocol && a.name == b.name;
  }
};

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// Where a row is: its partition day and its batch (plus position for a summary).
struct PairState {
  std::int64_t target = 0;
  bool has_best = false;
  bool best_sent = false;  // sent > 0
  std::int64_t best_day = 0;
  std::int64_t best_batch = 0;
  std::int64_t best_idx = 0;
  std::int64_t best_end = 0;
  std::int64_t best_seq = 0;
  bool on_disk = false;       // the pairs row exists
  bool disk_implied = false;  // the pairs row says "in the agent's newest batch" (NULL best_*)
  bool changed = false;       // best moved since the row was written
};

struct AgentState {
  std::int64_t id = 0;
  std::string agent_id, region, pop, arch, version;
  std::int64_t first_seen_ns = 0;
  std::int64_t last_seen_ns = 0;
  std::int64_t batch_count = 0;
  // The highest (incarnation id, seq) stored: ids grow in order of first arrival, so this is the
  // highest seq of the agent's newest incarnation (a reinstalled agent starts again at 1).
  bool has_max_seq = false;
  std::int64_t max_incarnation = 0;
  std::int64_t max_seq = 0;
  std::int64_t spool_dropped = 0;
  bool has_latest = false;
  std::int64_t latest_day = 0, latest_batch = 0, latest_end = 0, latest_seq = 0;
  bool has_load = false;
  std::int64_t load_day = 0, load_row = 0, load_time = 0, load_seq = 0;
  bool has_self = false;
  std::int64_t self_day = 0, self_batch = 0, self_seq = 0;
  std::unordered_map<TargetKey, PairState, TargetHash, TargetEq> pairs;
  bool touched = false;
};

// The rank of a summary for "latest": one that sent probes beats one that did not, then the
// newer interval, then the higher seq, then the later position.
bool better(bool sent, std::int64_t end, std::int64_t seq, std::int64_t idx, const PairState& p) {
  if (!p.has_best) return true;
  return std::tie(sent, end, seq, idx) > std::tie(p.best_sent, p.best_end, p.best_seq, p.best_idx);
}

}  // namespace


// Everything the store holds: the connection, the prepared statements (global and per
// partition), and the dictionaries and running per-agent state the hot path updates in memory and
// writes once per group commit.
struct SqliteStore::Impl {
  struct Partition {
    std::int64_t day = 0;
    std::string name;
    Stmt insert_batch, insert_latency, insert_load, insert_rtt, insert_self, insert_path;
  };

  std::string path;
  Db db;  // declared before the statements: destroyed after them
  OpenOptions options;
  Stmt begin, commit, rollback, insert_agent, update_agent, insert_target, upsert_pair, insert_incarnation;

  // The dictionaries and running state mirror the database as of the last commit; a rollback
  // clears them (state_loaded = false) and the next store() reads them back.
  bool state_loaded = false;
  std::map<std::int64_t, std::unique_ptr<Partition>> partitions;
  Partition* last_partition = nullptr;  // a group's batches mostly share a day
  std::unordered_map<TargetKey, std::int64_t, TargetHash, TargetEq> targets;
  std::unordered_map<std::string, std::unique_ptr<AgentState>, StringHash, std::equal_to<>> agents;
  std::map<Incarnation, std::int64_t> incarnations;  // value -> incarnations.id
  std::vector<AgentState*> touched;

  std::string histogram, forward_histogram, backward_histogram, cpus, net, temps;  // reused buffers: no allocation per row once warm
  std::int64_t last_commit_ns = 0;
  std::int64_t last_store_ns = 0;
  std::int64_t last_retention_check_ns = 0;
  std::uint64_t expired_on_arrival = 0;

  std::string error(std::string_view what) const {
    std::string msg = "sqlite store ";
    msg += path;
    msg += ": ";
    msg += what;
    msg += ": ";
    msg += sqlite3_errmsg(db.get());
    msg += " (";
    msg += std::to_string(sqlite3_extended_errcode(db.get()));
    msg += ')';
    return msg;
  }

  std::int64_t wall_now() const { return options.wall_clock_ns != nullptr ? options.wall_clock_ns() : realtime_ns(); }

  // A partition of `day` is past retention once its whole day is older than the limit.
  bool expired(std::int64_t day, std::int64_t now) const {
    return options.retention_days > 0 && day + 1 + options.retention_days <= day_of(now);
  }

  std::string prepare(Stmt& stmt, const std::string& sql) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db.get(), sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK) {
      return error("cannot prepare " + sql);
    }
    stmt.reset(raw);
    return {};
  }

  std::string prepare_global() {
    const std::pair<Stmt*, const char*> all[] = {
        {&begin, "BEGIN IMMEDIATE"},  // take the write lock now: busy_timeout applies here, not mid-way
        {&commit, "COMMIT"},
        {&rollback, "ROLLBACK"},
        {&insert_agent, kInsertAgent},
        {&update_agent, kUpdateAgent},
        {&insert_target, kInsertTarget},
        {&upsert_pair, kUpsertPair},
        {&insert_incarnation, kInsertIncarnation},
    };
    for (const auto& [stmt, sql] : all) {
      if (std::string err = prepare(*stmt, sql); !err.empty()) return err;
    }
    return {};
  }

  std::vector<std::string> partition_names() const {
    std::vector<std::string> names;
    for (const auto& [day, p] : partitions) names.push_back(p->name);
    return names;
  }

  // Inside a transaction: the day's tables, its catalog row and the views over the new list.
  std::string create_partition(std::int64_t day) {
    const std::string name = partition_name(day);
    std::string ddl = subst(partition_ddl(), name);
    const std::size_t key = ddl.find("{KEY}");
    ddl.replace(key, 5, kBatchKeyColumns);
    if (exec(db.get(), ddl) != SQLITE_OK) return error("cannot create partition " + name);
    Stmt ins;
    if (std::string err = prepare(ins, "INSERT INTO partitions VALUES (?1, ?2, ?3)"); !err.empty()) return err;
    Binder(ins.get()).i64(day).text(name).i64(wall_now());
    if (run(ins.get()) != SQLITE_OK) return error("cannot record partition " + name);
    auto p = std::make_unique<Partition>();
    p->day = day;
    p->name = name;
    partitions.emplace(day, std::move(p));
    if (exec(db.get(), views_sql(partition_names())) != SQLITE_OK) return error("cannot rebuild views");
    return {};
  }

  std::string partition_for(std::int64_t day, Partition*& out) {
    if (last_partition != nullptr && last_partition->day == day) {
      out = last_partition;
      return {};
    }
    auto it = partitions.find(day);
    if (it == partitions.end()) {
      if (std::string err = create_partition(day); !err.empty()) return err;
      it = partitions.find(day);
    }
    Partition& p = *it->second;
    if (!p.insert_batch) {
      const std::pair<Stmt*, const char*> all[] = {{&p.insert_batch, kInsertBatch},
                                                   {&p.insert_latency, insert_latency_sql().c_str()},
                                                   {&p.insert_load, kInsertLoad},
                                                   {&p.insert_rtt, kInsertRtt},
                                                   {&p.insert_self, insert_self_sql().c_str()},
                                                   {&p.insert_path, kInsertPath}};
      for (const auto& [stmt, sql] : all) {
        if (std::string err = prepare(*stmt, subst(sql, p.name)); !err.empty()) return err;
      }
    }
    last_partition = out = &p;
    return {};
  }

  void clear_state() {
    state_loaded = false;
    partitions.clear();
    last_partition = nullptr;
    targets.clear();
    agents.clear();
    incarnations.clear();
    touched.clear();
  }

  std::string load_state();
  std::string flush_touched();
  std::string store_one(const IncomingBatch& in, std::int64_t now, StoreOutcome& outcome);
  std::string agent_for(const IncomingBatch& in, std::string_view region, std::string_view pop, AgentState*& out);
  std::string pair_for(AgentState& agent, TargetView key, PairState*& out);
  std::string incarnation_id(const IncomingBatch& in, std::int64_t& out);
  std::string rebuild_derived();
  std::string migrate(std::int64_t from_version);
  std::string migrate_v3();
  std::string migrate_v4();
  std::string ensure_self_columns();
  std::string ensure_path_tables();
  std::string store_paths(Partition& part, std::int64_t latency_id, const wire::LatencySummary& l);
  void bind_one_way(Binder& r, const wire::LatencySummary& l);
  std::size_t drop_expired(std::int64_t now, std::string& err);
};

std::string SqliteStore::Impl::load_state() {
  clear_state();
  sqlite3* h = db.get();
  int rc = each_row(h, "SELECT day, name FROM partitions ORDER BY day", kNoBind, [&](sqlite3_stmt* s) {
    auto p = std::make_unique<Partition>();
    p->day = sqlite3_column_int64(s, 0);
    p->name = column_text(s, 1);
    partitions.emplace(p->day, std::move(p));
  });
  if (rc != SQLITE_OK) return error("cannot read partitions");
  std::unordered_map<std::int64_t, TargetKey> by_id;
  rc = each_row(h, "SELECT id, name, protocol FROM targets", kNoBind, [&](sqlite3_stmt* s) {
    TargetKey k{column_text(s, 1), protocol_code(column_text(s, 2))};
    by_id.emplace(sqlite3_column_int64(s, 0), k);
    targets.emplace(std::move(k), sqlite3_column_int64(s, 0));
  });
  if (rc != SQLITE_OK) return error("cannot read targets");
  rc = each_row(h, "SELECT id, incarnation FROM incarnations", kNoBind, [&](sqlite3_stmt* s) {
    Incarnation value{};
    if (sqlite3_column_bytes(s, 1) != static_cast<int>(value.size())) return;  // never written so
    std::memcpy(value.data(), sqlite3_column_blob(s, 1), value.size());
    incarnations.emplace(value, sqlite3_column_int64(s, 0));
  });
  if (rc != SQLITE_OK) return error("cannot read incarnations");
  std::unordered_map<std::int64_t, AgentState*> agent_by_id;
  rc = each_row(h,
                "SELECT id, agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns, "
                "batch_count, max_seq, spool_dropped, latest_day, latest_batch, latest_interval_end_ns, "
                "latest_seq, load_day, load_row, load_time_ns, load_seq, self_day, self_batch, self_seq, "
                "incarnation FROM agents",
                kNoBind, [&](sqlite3_stmt* s) {
                  auto a = std::make_unique<AgentState>();
                  const auto i = [s](int c) { return sqlite3_column_int64(s, c); };
                  const auto null = [s](int c) { return sqlite3_column_type(s, c) == SQLITE_NULL; };
                  a->id = i(0);
                  a->agent_id = column_text(s, 1);
                  a->region = column_text(s, 2);
                  a->pop = column_text(s, 3);
                  a->arch = column_text(s, 4);
                  a->version = column_text(s, 5);
                  a->first_seen_ns = i(6);
                  a->last_seen_ns = i(7);
                  a->batch_count = i(8);
                  a->has_max_seq = !null(9);
                  a->max_seq = i(9);
                  a->spool_dropped = i(10);
                  a->has_latest = !null(11);
                  a->latest_day = i(11);
                  a->latest_batch = i(12);
                  a->latest_end = i(13);
                  a->latest_seq = i(14);
                  a->has_load = !null(15);
                  a->load_day = i(15);
                  a->load_row = i(16);
                  a->load_time = i(17);
                  a->load_seq = i(18);
                  a->has_self = !null(19);
                  a->self_day = i(19);
                  a->self_batch = i(20);
                  a->self_seq = i(21);
                  a->max_incarnation = i(22);
                  agent_by_id.emplace(a->id, a.get());
                  std::string key = a->agent_id;
                  agents.emplace(std::move(key), std::move(a));
                });
  if (rc != SQLITE_OK) return error("cannot read agents");
  rc = each_row(h, "SELECT * FROM pairs", kNoBind, [&](sqlite3_stmt* s) {
    const auto a = agent_by_id.find(sqlite3_column_int64(s, 0));
    const auto t = by_id.find(sqlite3_column_int64(s, 1));
    if (a == agent_by_id.end() || t == by_id.end()) return;
    PairState& p = a->second->pairs[t->second];
    p.target = t->first;
    p.on_disk = true;
    p.disk_implied = sqlite3_column_type(s, 2) == SQLITE_NULL;
    if (!p.disk_implied) {
      p.has_best = true;
      p.best_day = sqlite3_column_int64(s, 2);
      p.best_batch = sqlite3_column_int64(s, 3);
      p.best_idx = sqlite3_column_int64(s, 4);
      p.best_end = sqlite3_column_int64(s, 5);
      p.best_seq = sqlite3_column_int64(s, 6);
      p.best_sent = sqlite3_column_int64(s, 7) != 0;
    }
  });
  if (rc != SQLITE_OK) return error("cannot read pairs");
  // An implied pair's best row is in its agent's newest batch: read those batches' summaries.
  for (auto& [name, a] : agents) {
    if (!a->has_latest || partitions.count(a->latest_day) == 0) continue;
    const std::string sql = subst("SELECT id & 16777215, target, sent > 0 FROM latency_{P} WHERE id BETWEEN ?1 AND ?2",
                                  partition_name(a->latest_day));
    AgentState& agent = *a;
    rc = each_row(
        h, sql,
        [&](sqlite3_stmt* s) {
          return Binder(s).i64(agent.latest_batch << kChildShift).i64((agent.latest_batch << kChildShift) | kChildMask).rc();
        },
        [&](sqlite3_stmt* s) {
          const auto t = by_id.find(sqlite3_column_int64(s, 1));
          if (t == by_id.end()) return;
          const auto p = agent.pairs.find(TargetView(t->second));
          if (p == agent.pairs.end() || !p->second.disk_implied) return;
          const std::int64_t idx = sqlite3_column_int64(s, 0);
          const bool sent = sqlite3_column_int64(s, 2) != 0;
          if (better(sent, agent.latest_end, agent.latest_seq, idx, p->second)) {
            PairState& ps = p->second;
            ps.has_best = true;
            ps.best_sent = sent;
            ps.best_day = agent.latest_day;
            ps.best_batch = agent.latest_batch;
            ps.best_idx = idx;
            ps.best_end = agent.latest_end;
            ps.best_seq = agent.latest_seq;
          }
        });
    if (rc != SQLITE_OK) return error("cannot read the newest batch of " + agent.agent_id);
  }
  state_loaded = true;
  return {};
}

std::string SqliteStore::Impl::agent_for(const IncomingBatch& in, std::string_view region, std::string_view pop,
                                         AgentState*& out) {
  auto it = agents.find(in.agent_id);
  if (it == agents.end()) {
    Binder b(insert_agent.get());
    b.text(in.agent_id).text(region).text(pop).text(in.arch).text(in.software_version).i64(in.received_ns);
    if (b.rc() != SQLITE_OK || run(insert_agent.get()) != SQLITE_OK) return error("insert agent");
    auto a = std::make_unique<AgentState>();
    a->id = sqlite3_last_insert_rowid(db.get());
    a->agent_id = std::string(in.agent_id);
    a->region = std::string(region);
    a->pop = std::string(pop);
    a->arch = std::string(in.arch);
    a->version = std::string(in.software_version);
    a->first_seen_ns = a->last_seen_ns = in.received_ns;
    it = agents.emplace(a->agent_id, std::move(a)).first;
  }
  AgentState& a = *it->second;
  // The connection's identity as of this batch; arch and version only when Hello said.
  if (a.region != region) a.region.assign(region);
  if (a.pop != pop) a.pop.assign(pop);
  if (!in.arch.empty() && a.arch != in.arch) a.arch.assign(in.arch);
  if (!in.software_version.empty() && a.version != in.software_version) a.version.assign(in.software_version);
  a.last_seen_ns = std::max(a.last_seen_ns, in.received_ns);
  if (!a.touched) {
    a.touched = true;
    touched.push_back(&a);
  }
  out = &a;
  return {};
}

std::string SqliteStore::Impl::pair_for(AgentState& agent, TargetView key, PairState*& out) {
  if (auto it = agent.pairs.find(key); it != agent.pairs.end()) {
    out = &it->second;
    return {};
  }
  auto t = targets.find(key);
  if (t == targets.end()) {
    Binder b(insert_target.get());
    b.text(key.name).text(kProtocolNames[key.protocol]);
    if (b.rc() != SQLITE_OK || run(insert_target.get()) != SQLITE_OK) return error("insert target");
    t = targets.emplace(TargetKey{std::string(key.name), key.protocol}, sqlite3_last_insert_rowid(db.get())).first;
  }
  PairState& p = agent.pairs[TargetKey{std::string(key.name), key.protocol}];
  p.target = t->second;
  out = &p;
  return {};
}

// The incarnations.id of the batch's incarnation, added on first sight (inside the transaction:
// a rollback takes the row back and clears the in-memory map with the rest).
std::string SqliteStore::Impl::incarnation_id(const IncomingBatch& in, std::int64_t& out) {
  if (auto it = incarnations.find(in.incarnation); it != incarnations.end()) {
    out = it->second;
    return {};
  }
  Binder b(insert_incarnation.get());
  b.bytes(in.incarnation).i64(in.received_ns);
  if (b.rc() != SQLITE_OK || run(insert_incarnation.get()) != SQLITE_OK) return error("insert incarnation");
  out = sqlite3_last_insert_rowid(db.get());
  incarnations.emplace(in.incarnation, out);
  return {};
}

// Once per group commit: each touched agent's row, and the pairs rows whose meaning changed
// (see `pairs` in the header: steady state writes none).
std::string SqliteStore::Impl::flush_touched() {
  for (AgentState* a : touched) {
    a->touched = false;
    Binder b(update_agent.get());
    b.i64(a->id)
        .text(a->region)
        .text(a->pop)
        .text(a->arch)
        .text(a->version)
        .i64(a->last_seen_ns)
        .i64(a->batch_count)
        .opt_i64(a->has_max_seq, a->max_seq)
        .i64(a->spool_dropped)
        .opt_i64(a->has_latest, a->latest_day)
        .opt_i64(a->has_latest, a->latest_batch)
        .opt_i64(a->has_latest, a->latest_end)
        .opt_i64(a->has_latest, a->latest_seq)
        .opt_i64(a->has_load, a->load_day)
        .opt_i64(a->has_load, a->load_row)
        .opt_i64(a->has_load, a->load_time)
        .opt_i64(a->has_load, a->load_seq)
        .opt_i64(a->has_self, a->self_day)
        .opt_i64(a->has_self, a->self_batch)
        .opt_i64(a->has_self, a->self_seq)
        .i64(a->max_incarnation);
    if (b.rc() != SQLITE_OK || run(update_agent.get()) != SQLITE_OK) return error("update agent");
    for (auto& [key, p] : a->pairs) {
      if (!p.has_best) continue;
      const bool implied = a->has_latest && p.best_day == a->latest_day && p.best_batch == a->latest_batch;
      if (p.on_disk && implied == p.disk_implied && (implied || !p.changed)) continue;
      Binder r(upsert_pair.get());
      r.i64(a->id)
          .i64(p.target)
          .opt_i64(!implied, p.best_day)
          .opt_i64(!implied, p.best_batch)
          .opt_i64(!implied, p.best_idx)
          .opt_i64(!implied, p.best_end)
          .opt_i64(!implied, p.best_seq)
          .opt_i64(!implied, p.best_sent ? 1 : 0);
      if (r.rc() != SQLITE_OK || run(upsert_pair.get()) != SQLITE_OK) return error("write pair");
      p.on_disk = true;
      p.disk_implied = implied;
      p.changed = false;
    }
  }
  touched.clear();
  return {};
}

std::string SqliteStore::Impl::store_one(const IncomingBatch& in, std::int64_t now, StoreOutcome& outcome) {
  assert(in.batch != nullptr && "IncomingBatch without a verified batch");
  const wire::Batch& b = *in.batch;
  const std::string_view region = in.filed_region();
  const std::string_view pop = in.filed_pop();
  outcome = StoreOutcome::kStored;

  AgentState* agent = nullptr;
  if (std::string err = agent_for(in, region, pop, agent); !err.empty()) return err;
  const std::int64_t day = day_of(b.interval_end_ns());
  if (expired(day, now)) {
    ++expired_on_arrival;
    return {};
  }
  Partition* part = nullptr;
  if (std::string err = partition_for(day, part); !err.empty()) return err;

  const auto* latency = b.latency();
  const auto* load = b.load();
  const auto* rtts = b.rtt_samples();
  const auto count = [](const auto* v) -> std::int64_t { return v == nullptr ? 0 : v->size(); };
  const auto seq = static_cast<std::int64_t>(b.seq());
  std::int64_t incarnation = 0;
  if (std::string err = incarnation_id(in, incarnation); !err.empty()) return err;
  Binder batch(part->insert_batch.get());
  batch.i64(agent->id)
      .i64(incarnation)
      .i64(seq)  // with agent and incarnation: the batch key (kBatchKeyColumns)
      .i64(b.interval_start_ns())
      .i64(b.interval_end_ns())
      .i64(in.received_ns)
      .text(region)
      .text(pop)
      .i64(count(latency))
      .i64(count(load))
      .i64(count(rtts))
      .u64(b.spool_dropped());  // v1.1 field: a first-version batch reads 0
  const wire::ClockState* clock = b.clock();
  batch.opt_i64(clock != nullptr, clock != nullptr && clock->synchronised() ? 1 : 0)
      .opt_i64(clock != nullptr, clock != nullptr ? clock->estimated_error_ns() : 0)
      .opt_i64(clock != nullptr, clock != nullptr ? clock->maximum_error_ns() : 0)
      .opt_i64(clock != nullptr, clock != nullptr ? static_cast<std::int64_t>(clock->source()) : 0);
  if (batch.rc() != SQLITE_OK || run(part->insert_batch.get()) != SQLITE_OK) return error("insert batch");
  // OR IGNORE turned a second (agent, incarnation, seq) into a no-op: the first copy stands, no
  // children.
  if (sqlite3_changes(db.get()) == 0) {
    outcome = StoreOutcome::kDuplicate;
    return {};
  }
  const std::int64_t batch_id = sqlite3_last_insert_rowid(db.get());
  const std::int64_t base = batch_id << kChildShift;

  ++agent->batch_count;
  if (!agent->has_max_seq || std::tie(incarnation, seq) > std::tie(agent->max_incarnation, agent->max_seq)) {
    agent->has_max_seq = true;
    agent->max_incarnation = incarnation;
    agent->max_seq = seq;
    agent->spool_dropped = static_cast<std::int64_t>(b.spool_dropped());
  }
  const std::int64_t end = b.interval_end_ns();
  if (!agent->has_latest || std::tie(end, seq) > std::tie(agent->latest_end, agent->latest_seq)) {
    agent->has_latest = true;
    agent->latest_day = day;
    agent->latest_batch = batch_id;
    agent->latest_end = end;
    agent->latest_seq = seq;
  }

  // Children beyond 2^24 per vector (far past any real batch) are not stored: ids must stay in
  // their batch's range.
  if (latency != nullptr) {
    const std::int64_t n = std::min<std::int64_t>(latency->size(), kMaxChildren);
    sqlite3_stmt* st = part->insert_latency.get();
    for (std::int64_t idx = 0; idx < n; ++idx) {
      const wire::LatencySummary* l = latency->Get(static_cast<flatbuffers::uoffset_t>(idx));
      PairState* pair = nullptr;
      if (std::string err = pair_for(*agent, TargetView{wire::str(l->target()), protocol_code(l->protocol())}, pair);
          !err.empty()) {
        return err;
      }
      histogram_blob(histogram, l->histogram());
      Binder r(st);
      r.i64(base + idx)
          .i64(pair->target)
          .i64(l->sent())
          .i64(l->received())
          .i64(l->lost())
          .i64(l->late())
          .i64(l->reordered())
          .i64(l->duplicates())
          .i64(l->lost_outbound())
          .i64(l->lost_inbound())
          .i64(l->min_ns())
          .i64(l->max_ns())
          .real(l->mean_ns())
          .real(l->stddev_ns())
          .i64(l->p50_ns())
          .i64(l->p90_ns())
          .i64(l->p99_ns())
          .i64(l->p999_ns())
          .real(l->jitter_mean_ns())
          .i64(l->jitter_p99_ns())
          .i64(static_cast<std::int64_t>(l->timestamp_source()))
          .i64(l->histogram_scheme())
          .blob(histogram)
          .i64(l->send_errors())
          .i64(l->unexpected())
          .i64(l->invalid())
          .i64(l->reflector_restarts())
          .i64(l->session_resets())
          .i64(l->ipdv_count())
          .i64(l->histogram_overflow())
          .i64(l->histogram_dropped());
      bind_one_way(r, *l);
      if (r.rc() != SQLITE_OK || run(st) != SQLITE_OK) return error("insert latency summary");
      if (std::string err = store_paths(*part, base + idx, *l); !err.empty()) return err;
      const bool sent = l->sent() > 0;
      if (better(sent, end, seq, idx, *pair)) {
        pair->has_best = true;
        pair->best_sent = sent;
        pair->best_day = day;
        pair->best_batch = batch_id;
        pair->best_idx = idx;
        pair->best_end = end;
        pair->best_seq = seq;
        pair->changed = true;
      }
    }
  }

  if (load != nullptr) {
    const std::int64_t n = std::min<std::int64_t>(load->size(), kMaxChildren);
    for (std::int64_t idx = 0; idx < n; ++idx) {
      const wire::LoadSample* s = load->Get(static_cast<flatbuffers::uoffset_t>(idx));
      const wire::CpuUsage* total = nullptr;
      std::int64_t cpu_count = 0;
      if (s->cpus() != nullptr) {
        for (const wire::CpuUsage* c : *s->cpus()) {
          if (c->cpu() < 0) {
            total = c;
          } else {
            ++cpu_count;
          }
        }
      }
      const wire::MemoryUsage* mem = s->memory();
      const wire::Pressure* p = s->pressure();
      const wire::LoadAverage* la = s->load_average();
      cpus_json(cpus, s->cpus());
      net_json(net, s->net());
      temperatures_json(temps, s->temperatures());
      const auto f = [](float v) { return static_cast<double>(v); };
      Binder r(part->insert_load.get());
      r.i64(base + idx)
          .i64(s->time_ns())
          .text(wire::str(s->arch()))
          .opt_real(total, total ? f(total->user()) : 0.0)
          .opt_real(total, total ? f(total->system()) : 0.0)
          .opt_real(total, total ? f(total->iowait()) : 0.0)
          .opt_real(total, total ? f(total->steal()) : 0.0)
          .opt_real(total, total ? f(total->irq()) : 0.0)
          .opt_real(total, total ? f(total->softirq()) : 0.0)
          .opt_real(total, total ? f(total->idle()) : 0.0)
          // Busy = neither idle nor waiting on I/O (iowait is idle time with I/O pending).
          .opt_real(total, total ? 1.0 - f(total->idle()) - f(total->iowait()) : 0.0)
          .i64(cpu_count)
          .opt_u64(mem, mem ? mem->total_bytes() : 0)
          .opt_u64(mem, mem ? mem->available_bytes() : 0)
          .opt_u64(mem, mem ? mem->dirty_bytes() : 0)
          .opt_u64(mem, mem ? mem->swap_total_bytes() : 0)
          .opt_u64(mem, mem ? mem->swap_free_bytes() : 0)
          .opt_real(la, la ? f(la->one()) : 0.0)
          .opt_real(la, la ? f(la->five()) : 0.0)
          .opt_real(la, la ? f(la->fifteen()) : 0.0);
      psi(r, p, p ? p->cpu_some_avg10() : 0.0f);
      psi(r, p, p ? p->memory_some_avg10() : 0.0f);
      psi(r, p, p ? p->memory_full_avg10() : 0.0f);
      psi(r, p, p ? p->io_some_avg10() : 0.0f);
      psi(r, p, p ? p->io_full_avg10() : 0.0f);
      r.text(cpus).text(net).text(temps);
      if (r.rc() != SQLITE_OK || run(part->insert_load.get()) != SQLITE_OK) return error("insert load sample");
      const std::int64_t t = s->time_ns();
      if (!agent->has_load || std::tie(t, seq) > std::tie(agent->load_time, agent->load_seq)) {
        agent->has_load = true;
        agent->load_day = day;
        agent->load_row = base + idx;
        agent->load_time = t;
        agent->load_seq = seq;
      }
    }
  }

  if (const wire::AgentSelf* m = b.self()) {
    Binder r(part->insert_self.get());
    r.i64(batch_id);
    const wire::AgentSelfValues values = wire::agent_self_values(*m);
    wire::for_each_agent_self_field(values, [&r](const wire::AgentSelfField&, auto v) {
      r.i64(static_cast<std::int64_t>(v));
    });
    if (r.rc() != SQLITE_OK || run(part->insert_self.get()) != SQLITE_OK) return error("insert agent self-metrics");
    if (!agent->has_self || seq > agent->self_seq) {
      agent->has_self = true;
      agent->self_day = day;
      agent->self_batch = batch_id;
      agent->self_seq = seq;
    }
  }

  if (rtts != nullptr) {
    const std::int64_t n = std::min<std::int64_t>(rtts->size(), kMaxChildren);
    for (std::int64_t idx = 0; idx < n; ++idx) {
      const wire::RttSample* t = rtts->Get(static_cast<flatbuffers::uoffset_t>(idx));
      Binder r(part->insert_rtt.get());
      r.i64(base + idx).i64(t->target_index()).i64(t->seq()).i64(t->send_time_ns()).i64(t->rtt_ns());
      if (r.rc() != SQLITE_OK || run(part->insert_rtt.get()) != SQLITE_OK) return error("insert rtt sample");
    }
  }
  return {};
}

namespace {

// floor(x / day) in SQL, whose integer division truncates toward zero.
std::string sql_day_of(const char* x) {
  const std::string d = std::to_string(kPartitionNs);
  return std::string("(CASE WHEN ") + x + " >= 0 THEN " + x + " / " + d + " ELSE -((-(" + x + " + 1)) / " + d +
         ") - 1 END)";
}

bool table_exists(sqlite3* db, const char* name) {
  std::int64_t n = 0;
  const std::string sql = std::string("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '") + name + "'";
  return query_int(db, sql.c_str(), n) == SQLITE_OK && n > 0;
}

}  // namespace

// The running totals and "latest" pointers from the data itself: after a migration (and usable
// as a repair). Reads every partition once.
std::string SqliteStore::Impl::rebuild_derived() {
  if (std::string err = load_state(); !err.empty()) return err;
  sqlite3* h = db.get();
  std::unordered_map<std::int64_t, AgentState*> by_id;
  for (auto& [name, a] : agents) {
    AgentState fresh;
    fresh.id = a->id;
    fresh.agent_id = a->agent_id;
    fresh.region = a->region;
    fresh.pop = a->pop;
    fresh.arch = a->arch;
    fresh.version = a->version;
    fresh.first_seen_ns = a->first_seen_ns;
    fresh.last_seen_ns = a->last_seen_ns;
    *a = std::move(fresh);
    by_id.emplace(a->id, a.get());
  }
  std::unordered_map<std::int64_t, const TargetKey*> target_by_id;
  for (const auto& [key, id] : targets) target_by_id.emplace(id, &key);
  for (const auto& [day, part] : partitions) {
    const std::int64_t d = day;
    int rc = each_row(h, subst("SELECT id, agent, seq, interval_end_ns, spool_dropped, incarnation FROM batches_{P}",
                               part->name),
                      kNoBind, [&](sqlite3_stmt* s) {
                        const auto it = by_id.find(sqlite3_column_int64(s, 1));
                        if (it == by_id.end()) return;
                        AgentState& a = *it->second;
                        const std::int64_t id = sqlite3_column_int64(s, 0), seq = sqlite3_column_int64(s, 2),
                                           end = sqlite3_column_int64(s, 3), inc = sqlite3_column_int64(s, 5);
                        ++a.batch_count;
                        if (!a.has_max_seq || std::tie(inc, seq) > std::tie(a.max_incarnation, a.max_seq)) {
                          a.has_max_seq = true;
                          a.max_incarnation = inc;
                          a.max_seq = seq;
                          a.spool_dropped = sqlite3_column_int64(s, 4);
                        }
                        if (!a.has_latest || std::tie(end, seq) > std::tie(a.latest_end, a.latest_seq)) {
                          a.has_latest = true;
                          a.latest_day = d;
                          a.latest_batch = id;
                          a.latest_end = end;
                          a.latest_seq = seq;
                        }
                      });
    if (rc != SQLITE_OK) return error("cannot read " + part->name);
    rc = each_row(h,
                  subst("SELECT l.id, l.target, l.sent > 0, b.agent, b.seq, b.interval_end_ns FROM latency_{P} AS l "
                        "JOIN batches_{P} AS b ON b.id = l.id >> 24",
                        part->name),
                  kNoBind, [&](sqlite3_stmt* s) {
                    const auto a = by_id.find(sqlite3_column_int64(s, 3));
                    const auto t = target_by_id.find(sqlite3_column_int64(s, 1));
                    if (a == by_id.end() || t == target_by_id.end()) return;
                    PairState& p = a->second->pairs[*t->second];
                    p.target = t->first;
                    const std::int64_t id = sqlite3_column_int64(s, 0);
                    const bool sent = sqlite3_column_int64(s, 2) != 0;
                    const std::int64_t seq = sqlite3_column_int64(s, 4), end = sqlite3_column_int64(s, 5);
                    if (better(sent, end, seq, id & kChildMask, p)) {
                      p.has_best = true;
                      p.best_sent = sent;
                      p.best_day = d;
                      p.best_batch = id >> kChildShift;
                      p.best_idx = id & kChildMask;
                      p.best_end = end;
                      p.best_seq = seq;
                    }
                  });
    if (rc != SQLITE_OK) return error("cannot read latency_" + part->name);
    rc = each_row(h,
                  subst("SELECT l.id, l.time_ns, b.agent, b.seq FROM load_{P} AS l JOIN batches_{P} AS b "
                        "ON b.id = l.id >> 24",
                        part->name),
                  kNoBind, [&](sqlite3_stmt* s) {
                    const auto it = by_id.find(sqlite3_column_int64(s, 2));
                    if (it == by_id.end()) return;
                    AgentState& a = *it->second;
                    const std::int64_t t = sqlite3_column_int64(s, 1), seq = sqlite3_column_int64(s, 3);
                    if (!a.has_load || std::tie(t, seq) > std::tie(a.load_time, a.load_seq)) {
                      a.has_load = true;
                      a.load_day = d;
                      a.load_row = sqlite3_column_int64(s, 0);
                      a.load_time = t;
                      a.load_seq = seq;
                    }
                  });
    if (rc != SQLITE_OK) return error("cannot read load_" + part->name);
    rc = each_row(h, subst("SELECT s.batch, b.agent, b.seq FROM self_{P} AS s JOIN batches_{P} AS b ON b.id = s.batch",
                           part->name),
                  kNoBind, [&](sqlite3_stmt* s) {
                    const auto it = by_id.find(sqlite3_column_int64(s, 1));
                    if (it == by_id.end()) return;
                    AgentState& a = *it->second;
                    const std::int64_t seq = sqlite3_column_int64(s, 2);
                    if (!a.has_self || seq > a.self_seq) {
                      a.has_self = true;
                      a.self_day = d;
                      a.self_batch = sqlite3_column_int64(s, 0);
                      a.self_seq = seq;
                    }
                  });
    if (rc != SQLITE_OK) return error("cannot read self_" + part->name);
  }
  for (auto& [name, a] : agents) {
    a->touched = true;
    touched.push_back(a.get());
  }
  if (exec(h, "DELETE FROM pairs") != SQLITE_OK) return error("cannot clear pairs");
  return flush_touched();
}

// v3 -> v4 inside the caller's transaction: the incarnations dictionary, and in every partition
// an incarnation column (0, legacy, for every existing batch: a DEFAULT, so no row is rewritten)
// and the batch key index rebuilt on (agent, incarnation, seq). migrate_v4() follows.
std::string SqliteStore::Impl::migrate_v3() {
  sqlite3* h = db.get();
  if (exec(h, kSchemaV4Additions) != SQLITE_OK) return error("cannot add the incarnations");
  std::vector<std::string> names;
  if (each_row(h, "SELECT name FROM partitions ORDER BY day", kNoBind,
               [&](sqlite3_stmt* s) { names.push_back(column_text(s, 0)); }) != SQLITE_OK) {
    return error("cannot read partitions");
  }
  for (const std::string& name : names) {
    std::string sql = subst(
        "ALTER TABLE batches_{P} ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;"
        "DROP INDEX batches_{P}_key;"
        "CREATE UNIQUE INDEX batches_{P}_key ON batches_{P}({KEY});",
        name);
    sql.replace(sql.find("{KEY}"), 5, kBatchKeyColumns);
    if (exec(h, sql) != SQLITE_OK) return error("cannot add the incarnation to batches_" + name);
  }
  return {};
}

// v4 -> v5 inside the caller's transaction: every partition gains the one-way columns of
// latency_{P} and the clock columns of batches_{P} (kLatencyV5Columns, kBatchV5Columns), NULL for
// every existing row: ADD COLUMN without a DEFAULT rewrites nothing. The views gain them.
std::string SqliteStore::Impl::migrate_v4() {
  sqlite3* h = db.get();
  std::vector<std::string> names;
  if (each_row(h, "SELECT name FROM partitions ORDER BY day", kNoBind,
               [&](sqlite3_stmt* s) { names.push_back(column_text(s, 0)); }) != SQLITE_OK) {
    return error("cannot read partitions");
  }
  for (const std::string& name : names) {
    std::string sql;
    for (const AddedColumn& c : kBatchV5Columns) {
      sql += "ALTER TABLE batches_" + name + " ADD COLUMN " + c.name + " " + c.type + ";";
    }
    for (const AddedColumn& c : kLatencyV5Columns) {
      sql += "ALTER TABLE latency_" + name + " ADD COLUMN " + c.name + " " + c.type + ";";
    }
    if (exec(h, sql) != SQLITE_OK) return error("cannot add the one-way and clock columns to " + name);
  }
  if (exec(h, views_sql(names)) != SQLITE_OK) return error("cannot rebuild views");
  if (exec(h, "PRAGMA user_version=" + std::to_string(kSchemaVersion)) != SQLITE_OK) {
    return error("cannot set the schema version");
  }
  return {};
}

// v1/v2 -> v5 inside the caller's transaction: the old tables are renamed, copied into day
// partitions (ids replace text keys; every batch under the legacy incarnation; no clock or one-way
// figures), dropped; then the running totals are computed. v3 -> v4 is migrate_v3(), v4 -> v5
// migrate_v4().
std::string SqliteStore::Impl::migrate(std::int64_t from_version) {
  if (from_version == 3) {
    if (std::string err = migrate_v3(); !err.empty()) return err;
    return migrate_v4();
  }
  if (from_version == 4) return migrate_v4();
  sqlite3* h = db.get();
  const bool has_self = from_version >= 2 && table_exists(h, "agent_self");
  std::vector<const char*> old_tables{"agents", "batches", "latency_summaries", "load_samples", "rtt_samples"};
  if (has_self) old_tables.push_back("agent_self");
  for (const char* t : old_tables) {
    if (exec(h, std::string("ALTER TABLE ") + t + " RENAME TO v2_" + t) != SQLITE_OK) return error("cannot rename " + std::string(t));
  }
  if (exec(h, std::string(kSchemaV4Dictionaries) + kSchemaV4Additions) != SQLITE_OK) {
    return error("cannot create schema version " + std::to_string(kSchemaVersion));
  }
  if (sqlite3_create_function(h, "vantage_histogram_v3", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                              histogram_v3_from_v2, nullptr, nullptr) != SQLITE_OK) {
    return error("cannot register the histogram conversion");
  }
  if (std::string err = prepare_global(); !err.empty()) return err;
  if (exec(h, R"sql(
INSERT INTO agents(agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns)
  SELECT agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns FROM v2_agents ORDER BY agent_id;
INSERT INTO targets(name, protocol) SELECT DISTINCT target, protocol FROM v2_latency_summaries ORDER BY 1, 2;
)sql") != SQLITE_OK) {
    return error("cannot copy agents and targets");
  }
  clear_state();
  std::vector<std::int64_t> days;
  int rc = each_row(h, "SELECT DISTINCT " + sql_day_of("interval_end_ns") + " FROM v2_batches ORDER BY 1", kNoBind,
                    [&](sqlite3_stmt* s) { days.push_back(sqlite3_column_int64(s, 0)); });
  if (rc != SQLITE_OK) return error("cannot list the days of the old batches");
  for (const std::int64_t day : days) {
    if (std::string err = create_partition(day); !err.empty()) return err;
    const std::string name = partition_name(day);
    std::string copy = subst(R"sql(
INSERT INTO batches_{P}(agent, seq, interval_start_ns, interval_end_ns, received_ns, region, pop, latency_count,
                        load_count, rtt_sample_count, spool_dropped)
  SELECT a.id, b.seq, b.interval_start_ns, b.interval_end_ns, b.received_ns, b.region, b.pop, b.latency_count,
         b.load_count, b.rtt_sample_count, b.spool_dropped
  FROM v2_batches AS b JOIN agents AS a ON a.agent_id = b.agent_id
  WHERE {DAY} = {D} ORDER BY b.received_ns, a.id, b.seq;
INSERT INTO latency_{P}(id, target, sent, received, lost, late, reordered, duplicates, lost_outbound,
                        lost_inbound, min_ns, max_ns, mean_ns, stddev_ns, p50_ns, p90_ns, p99_ns, p999_ns,
                        jitter_mean_ns, jitter_p99_ns, timestamp_source, histogram_scheme, histogram,
                        send_errors, unexpected, invalid, reflector_restarts, session_resets, ipdv_count,
                        histogram_overflow, histogram_dropped)
  SELECT (nb.id << 24) + l.idx, t.id, l.sent, l.received, l.lost, l.late, l.reordered, l.duplicates,
         l.lost_outbound, l.lost_inbound, l.min_ns, l.max_ns, l.mean_ns, l.stddev_ns, l.p50_ns, l.p90_ns,
         l.p99_ns, l.p999_ns, l.jitter_mean_ns, l.jitter_p99_ns,
         CASE l.timestamp_source WHEN 'userspace' THEN 0 WHEN 'kernel' THEN 1 ELSE 255 END,
         l.histogram_scheme, vantage_histogram_v3(l.histogram), l.send_errors, l.unexpected, l.invalid, l.reflector_restarts,
         l.session_resets, l.ipdv_count, l.histogram_overflow, l.histogram_dropped
  FROM batches_{P} AS nb JOIN agents AS a ON a.id = nb.agent
  JOIN v2_latency_summaries AS l ON l.agent_id = a.agent_id AND l.seq = nb.seq
  JOIN targets AS t ON t.name = l.target AND t.protocol = l.protocol
  ORDER BY nb.id, l.idx;
INSERT INTO load_{P}
  SELECT (nb.id << 24) + s.idx, s.time_ns, s.arch, s.cpu_user, s.cpu_system, s.cpu_iowait, s.cpu_steal, s.cpu_irq,
         s.cpu_softirq, s.cpu_idle, s.cpu_busy, s.cpu_count, s.mem_total, s.mem_available, s.mem_dirty,
         s.swap_total, s.swap_free, s.load1, s.load5, s.load15, s.psi_cpu_some, s.psi_memory_some,
         s.psi_memory_full, s.psi_io_some, s.psi_io_full, s.cpus_json, s.net_json, s.temperatures_json
  FROM batches_{P} AS nb JOIN agents AS a ON a.id = nb.agent
  JOIN v2_load_samples AS s ON s.agent_id = a.agent_id AND s.seq = nb.seq
  ORDER BY nb.id, s.idx;
INSERT INTO rtt_{P}
  SELECT (nb.id << 24) + r.idx, r.target_index, r.probe_seq, r.send_time_ns, r.rtt_ns
  FROM batches_{P} AS nb JOIN agents AS a ON a.id = nb.agent
  JOIN v2_rtt_samples AS r ON r.agent_id = a.agent_id AND r.seq = nb.seq
  ORDER BY nb.id, r.idx;
)sql",
                             name);
    if (has_self) {
      copy += subst(R"sql(
INSERT INTO self_{P}(batch, process_start_ns, config_generation, rss_bytes, cpu_user_ns, cpu_system_ns,
                    probe_ring_dropped, load_ring_dropped, spool_records, spool_bytes, reconnects,
                    connect_failures, tls_failures, rejected)
  SELECT nb.id, s.process_start_ns, s.config_generation, s.rss_bytes, s.cpu_user_ns, s.cpu_system_ns,
         s.probe_ring_dropped, s.load_ring_dropped, s.spool_records, s.spool_bytes, s.reconnects,
         s.connect_failures, s.tls_failures, s.rejected
  FROM batches_{P} AS nb JOIN agents AS a ON a.id = nb.agent
  JOIN v2_agent_self AS s ON s.agent_id = a.agent_id AND s.seq = nb.seq
  ORDER BY nb.id;
)sql",
                    name);
    }
    copy.replace(copy.find("{DAY}"), 5, sql_day_of("b.interval_end_ns"));
    copy.replace(copy.find("{D}"), 3, std::to_string(day));
    if (exec(h, copy) != SQLITE_OK) return error("cannot copy the old rows into " + name);
  }
  for (auto it = old_tables.rbegin(); it != old_tables.rend(); ++it) {
    if (exec(h, std::string("DROP TABLE v2_") + *it) != SQLITE_OK) return error("cannot drop the old " + std::string(*it));
  }
  if (std::string err = rebuild_derived(); !err.empty()) return err;
  if (exec(h, "PRAGMA user_version=" + std::to_string(kSchemaVersion)) != SQLITE_OK) {
    return error("cannot set the schema version");
  }
  return {};
}

// A field appended to AgentSelf after a partition was made: ALTER TABLE ADD COLUMN on every
// partition that lacks it (its older rows read NULL, i.e. 0), then the views over the new columns.
std::string SqliteStore::Impl::ensure_self_columns() {
  sqlite3* h = db.get();
  std::vector<std::string> names;
  int rc = each_row(h, "SELECT name FROM partitions ORDER BY day", kNoBind,
                    [&](sqlite3_stmt* s) { names.push_back(column_text(s, 0)); });
  std::string alter;
  for (std::size_t i = 0; rc == SQLITE_OK && i < names.size(); ++i) {
    std::vector<std::string> have;
    rc = each_row(h, "SELECT name FROM pragma_table_info('self_" + names[i] + "')", kNoBind,
                  [&](sqlite3_stmt* s) { have.push_back(column_text(s, 0)); });
    for (const wire::AgentSelfField& f : wire::kAgentSelfFields) {
      if (std::find(have.begin(), have.end(), f.name) == have.end()) {
        alter += "ALTER TABLE self_" + names[i] + " ADD COLUMN " + f.name + " INTEGER;";
      }
    }
  }
  if (rc != SQLITE_OK) return error("cannot read the self-metrics columns");
  if (alter.empty()) return {};
  if (exec(h, "BEGIN IMMEDIATE;" + alter + views_sql(names) + "COMMIT;") != SQLITE_OK) {
    std::string err = error("cannot add the new self-metrics columns");
    exec(h, "ROLLBACK");
    return err;
  }
  return {};
}

// Partitions made before per-path rows existed get an empty path_{P}, so that the views cover
// every partition; nothing else changes (schema version included: an older collector ignores it).
std::string SqliteStore::Impl::ensure_path_tables() {
  sqlite3* h = db.get();
  std::vector<std::string> names;
  std::string create;
  int rc = each_row(h, "SELECT name FROM partitions ORDER BY day", kNoBind,
                    [&](sqlite3_stmt* s) { names.push_back(column_text(s, 0)); });
  for (std::size_t i = 0; rc == SQLITE_OK && i < names.size(); ++i) {
    if (!table_exists(h, ("path_" + names[i]).c_str())) create += subst(kPathTableDdl, names[i]);
  }
  if (rc != SQLITE_OK) return error("cannot read the partitions");
  if (create.empty()) return {};
  if (exec(h, "BEGIN IMMEDIATE;" + create + views_sql(names) + "COMMIT;") != SQLITE_OK) {
    std::string err = error("cannot add the per-path tables");
    exec(h, "ROLLBACK");
    return err;
  }
  return {};
}

// The kLatencyV5Columns of one summary: all NULL when it carries no one_way (an older agent), so
// "not known" stays apart from "measured nothing".
void SqliteStore::Impl::bind_one_way(Binder& r, const wire::LatencySummary& l) {
  const wire::OneWay* w = l.one_way();
  if (w == nullptr) {
    for (std::size_t i = 0; i + 1 < std::size(kLatencyV5Columns); ++i) r.null();
  } else {
    histogram_blob(forward_histogram, w->forward_histogram());
    histogram_blob(backward_histogram, w->backward_histogram());
    r.i64(static_cast<std::int64_t>(w->status()))
        .i64(w->error_bound_ns())
        .real(static_cast<double>(w->max_error_fraction()))
        .i64(w->sender_synchronised() ? 1 : 0)
        .i64(w->reflector_synchronised() ? 1 : 0)
        .i64(w->sender_error_ns())
        .i64(w->reflector_error_ns())
        .i64(w->samples())
        .i64(w->forward_min_ns())
        .i64(w->forward_p50_ns())
        .i64(w->forward_p90_ns())
        .i64(w->forward_p99_ns())
        .i64(w->forward_max_ns())
        .i64(w->backward_min_ns())
        .i64(w->backward_p50_ns())
        .i64(w->backward_p90_ns())
        .i64(w->backward_p99_ns())
        .i64(w->backward_max_ns())
        .i64(w->histogram_scheme())
        .blob(forward_histogram)
        .blob(backward_histogram);
  }
  // 0 is "none" on the wire (STAMP's SSID is 1..65535): NULL for every other protocol.
  r.opt_i64(l.stamp_ssid() != 0, l.stamp_ssid());
}

// A summary's paths beyond kMaxPaths (more than any agent sends) are not stored: ids must stay in
// their summary's range. Path numbers are the row's position, the agent's own path kept as a column.
std::string SqliteStore::Impl::store_paths(Partition& part, std::int64_t latency_id, const wire::LatencySummary& l) {
  const auto* paths = l.paths();
  if (paths == nullptr) return {};
  const std::int64_t n = std::min<std::int64_t>(paths->size(), kMaxPaths);
  sqlite3_stmt* st = part.insert_path.get();
  for (std::int64_t i = 0; i < n; ++i) {
    const wire::PathStats* p = paths->Get(static_cast<flatbuffers::uoffset_t>(i));
    Binder r(st);
    r.i64((latency_id << kPathShift) + i)
        .i64(p->path())
        .i64(p->source_port())
        .i64(p->sent())
        .i64(p->received())
        .i64(p->lost())
        .i64(p->min_ns())
        .i64(p->mean_ns())
        .i64(p->max_ns());
    if (r.rc() != SQLITE_OK || run(st) != SQLITE_OK) return error("insert path stats");
  }
  return {};
}

std::size_t SqliteStore::Impl::drop_expired(std::int64_t now, std::string& err) {
  if (options.retention_days <= 0 || options.read_only) return 0;
  sqlite3* h = db.get();
  std::vector<std::pair<std::int64_t, std::string>> all;
  if (each_row(h, "SELECT day, name FROM partitions ORDER BY day", kNoBind, [&](sqlite3_stmt* s) {
        all.emplace_back(sqlite3_column_int64(s, 0), column_text(s, 1));
      }) != SQLITE_OK) {
    err = error("cannot read partitions");
    return 0;
  }
  std::vector<std::string> keep;
  std::vector<std::pair<std::int64_t, std::string>> drop;
  for (auto& p : all) {
    if (expired(p.first, now)) {
      drop.push_back(std::move(p));
    } else {
      keep.push_back(std::move(p.second));
    }
  }
  if (drop.empty()) return 0;
  // Finalizes the cached statements on the tables about to go; the next store() reads the
  // dictionaries and totals back.
  clear_state();
  if (sqlite3_get_autocommit(h) == 0) exec(h, "ROLLBACK");
  if (exec(h, "BEGIN IMMEDIATE") != SQLITE_OK) {
    err = error("retention: begin");
    return 0;
  }
  // Pointers into a dropped day go with it. Days drop oldest first and an agent's newest batch is
  // its newest day, so an agent whose newest batch is gone has no data left at all.
  for (const auto& [day, name] : drop) {
    const std::string d = std::to_string(day);
    std::string sql = subst(
        "UPDATE agents SET batch_count = batch_count - (SELECT count(*) FROM batches_{P} WHERE agent = agents.id);"
        "DELETE FROM pairs WHERE best_day <= {D};"
        "DELETE FROM pairs WHERE best_day IS NULL AND agent IN (SELECT id FROM agents WHERE latest_day <= {D});"
        "UPDATE agents SET latest_day = NULL, latest_batch = NULL, latest_interval_end_ns = NULL, latest_seq = NULL "
        "  WHERE latest_day <= {D};"
        "UPDATE agents SET load_day = NULL, load_row = NULL, load_time_ns = NULL, load_seq = NULL WHERE load_day <= {D};"
        "UPDATE agents SET self_day = NULL, self_batch = NULL, self_seq = NULL WHERE self_day <= {D};"
        "DROP TABLE batches_{P}; DROP TABLE latency_{P}; DROP TABLE load_{P}; DROP TABLE rtt_{P}; DROP TABLE self_{P}; DROP TABLE IF EXISTS path_{P};"
        "DELETE FROM partitions WHERE day = {D};",
        name);
    for (std::size_t at; (at = sql.find("{D}")) != std::string::npos;) sql.replace(at, 3, d);
    if (exec(h, sql) != SQLITE_OK) {
      err = error("retention: cannot drop partition " + name);
      exec(h, "ROLLBACK");
      return 0;
    }
  }
  if (exec(h, views_sql(keep)) != SQLITE_OK || exec(h, "COMMIT") != SQLITE_OK) {
    err = error("retention: commit");
    exec(h, "ROLLBACK");
    return 0;
  }
  return drop.size();
}

SqliteStore::SqliteStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteStore::SqliteStore(SqliteStore&&) noexcept = default;
SqliteStore& SqliteStore::operator=(SqliteStore&&) noexcept = default;
SqliteStore::~SqliteStore() = default;

std::int64_t SqliteStore::last_commit_ns() const noexcept { return impl_->last_commit_ns; }
std::int64_t SqliteStore::last_store_ns() const noexcept { return impl_->last_store_ns; }
std::uint64_t SqliteStore::expired_on_arrival() const noexcept { return impl_->expired_on_arrival; }
const std::string& SqliteStore::path() const noexcept { return impl_->path; }
const char* SqliteStore::library_version() noexcept { return sqlite3_libversion(); }

Result<SqliteStore> SqliteStore::open(const std::string& path, const OpenOptions& options) {
  sqlite3* raw = nullptr;
  // NOMUTEX: one owning thread per connection (documented on the class), so SQLite's own
  // serialisation would be pure overhead.
  const int flags = (options.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                    SQLITE_OPEN_NOMUTEX;
  const int open_rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  auto impl = std::make_unique<Impl>();
  impl->db.reset(raw);  // sqlite3_open_v2 hands back a handle even on failure, to carry the message
  impl->path = path;
  impl->options = options;
  Impl& s = *impl;
  if (s.db == nullptr) {
    return failure("sqlite store " + path + ": cannot open: out of memory");
  }
  if (open_rc != SQLITE_OK) {
    return failure(s.error("cannot open"));
  }
  sqlite3* h = s.db.get();
  sqlite3_extended_result_codes(h, 1);
  sqlite3_busy_timeout(h, options.busy_timeout_ms);

  // Opening is lazy: the first statement that reads the file tells whether it is a database.
  std::int64_t version = 0;
  if (query_int(h, "PRAGMA user_version", version) != SQLITE_OK) {
    return failure(s.error("cannot read schema version"));
  }
  if (version > kSchemaVersion) {
    return failure("sqlite store " + path + ": schema version " + std::to_string(version) +
                   " is newer than this collector's " + std::to_string(kSchemaVersion));
  }
  if (options.cache_kib > 0 &&
      exec(h, "PRAGMA cache_size=-" + std::to_string(options.cache_kib)) != SQLITE_OK) {
    return failure(s.error("cannot set cache_size"));
  }
  if (options.read_only) {
    if (version != kSchemaVersion) {
      return failure("sqlite store " + path + ": schema version " + std::to_string(version) + ", expected " +
                     std::to_string(kSchemaVersion) +
                     " (read-only: not migrated; `vantage-collector serve` migrates it when it opens the file)");
    }
  } else {
    // WAL: readers (`vantage-collector query`, the status page) never block the ingest and a
    // commit is one sequential append. synchronous=FULL is the durability the acks promise: an
    // ack tells the agent to delete the batch from its spool, so a commit must survive power
    // loss; in WAL mode NORMAL skips the fsync of each commit and could lose acked batches.
    // Group commit pays it once per call.
    std::int64_t ignored = 0;
    if (query_int(h, "PRAGMA journal_mode=WAL", ignored) != SQLITE_OK) {
      return failure(s.error("cannot enable WAL"));
    }
    if (exec(h, "PRAGMA synchronous=FULL") != SQLITE_OK) {
      return failure(s.error("cannot set synchronous=FULL"));
    }
    if (version == 0) {
      const std::string create = std::string("BEGIN IMMEDIATE;") + kSchemaV4Dictionaries + kSchemaV4Additions +
                                 views_sql({}) +
                                 "PRAGMA user_version=" + std::to_string(kSchemaVersion) + ";COMMIT;";
      if (exec(h, create) != SQLITE_OK) {
        std::string err = s.error("cannot create schema version " + std::to_string(kSchemaVersion));
        exec(h, "ROLLBACK");
        return failure(std::move(err));
      }
    } else if (version < kSchemaVersion) {
      std::string err;
      if (exec(h, "BEGIN IMMEDIATE") != SQLITE_OK) {
        err = s.error("cannot begin");
      } else {
        err = s.migrate(version);
      }
      if (err.empty() && exec(h, "COMMIT") != SQLITE_OK) err = s.error("commit");
      if (!err.empty()) {
        exec(h, "ROLLBACK");
        return failure(err + " (migrating schema version " + std::to_string(version) + " to " +
                       std::to_string(kSchemaVersion) +
                       ": nothing was changed; free disk space or restore from a backup, then retry)");
      }
      s.clear_state();
    }
    if (std::string err = s.ensure_self_columns(); !err.empty()) {
      return failure(std::move(err));
    }
    if (std::string err = s.ensure_path_tables(); !err.empty()) {
      return failure(std::move(err));
    }
  }
  if (!s.begin) {
    if (std::string err = s.prepare_global(); !err.empty()) {
      return failure(std::move(err));
    }
  }
  if (!options.read_only) {
    std::string err;
    s.drop_expired(s.wall_now(), err);
    if (err.empty()) err = s.load_state();
    if (!err.empty()) {
      return failure(std::move(err));
    }
    s.last_retention_check_ns = s.wall_now();
  }
  return SqliteStore(std::move(impl));
}

std::size_t SqliteStore::drop_expired(std::int64_t now_ns) {
  std::string err;
  return impl_->drop_expired(now_ns, err);
}

Result<std::vector<StoreOutcome>> SqliteStore::store(std::span<const IncomingBatch> batches) {
  Impl& s = *impl_;
  const std::int64_t start = platform::monotonic_ns();
  const std::int64_t now = s.wall_now();
  if (s.options.retention_days > 0 && now - s.last_retention_check_ns >= kRetentionCheckNs) {
    s.last_retention_check_ns = now;
    // Cheap when nothing is due: the oldest partition's day against the limit.
    if (!s.state_loaded || (!s.partitions.empty() && s.expired(s.partitions.begin()->first, now))) {
      std::string ignored;  // a failed drop leaves the data in place; the next check retries it
      s.drop_expired(now, ignored);
    }
  }
  if (!s.state_loaded) {
    if (std::string err = s.load_state(); !err.empty()) {
      s.clear_state();
      return failure(std::move(err));
    }
  }
  sqlite3* h = s.db.get();
  const auto clear_bindings = [&] {
    for (auto& [day, p] : s.partitions) {
      for (Stmt* st : {&p->insert_batch, &p->insert_latency, &p->insert_load, &p->insert_rtt, &p->insert_self,
                       &p->insert_path}) {
        if (*st) sqlite3_clear_bindings(st->get());
      }
    }
    for (Stmt* st : {&s.insert_agent, &s.update_agent, &s.insert_target, &s.upsert_pair, &s.insert_incarnation}) {
      sqlite3_clear_bindings(st->get());
    }
  };
  const auto fail = [&](std::string err) {
    clear_bindings();
    run(s.rollback.get());  // may fail if SQLite already rolled back (e.g. SQLITE_FULL): harmless
    s.clear_state();        // the in-memory totals include what was rolled back
    return Result<std::vector<StoreOutcome>>(failure(std::move(err)));
  };
  // A transaction left open by a failed COMMIT whose ROLLBACK failed too would make every later
  // BEGIN fail: close it first, so one bad moment cannot wedge the store.
  if (sqlite3_get_autocommit(h) == 0) run(s.rollback.get());
  if (run(s.begin.get()) != SQLITE_OK) {
    return failure(s.error("begin"));
  }
  std::vector<StoreOutcome> outcomes(batches.size(), StoreOutcome::kStored);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    if (std::string err = s.store_one(batches[i], now, outcomes[i]); !err.empty()) return fail(std::move(err));
  }
  if (std::string err = s.flush_touched(); !err.empty()) return fail(std::move(err));
  const std::int64_t commit_start = platform::monotonic_ns();
  if (run(s.commit.get()) != SQLITE_OK) return fail(s.error("commit"));
  clear_bindings();
  const std::int64_t end = platform::monotonic_ns();
  s.last_commit_ns = end - commit_start;
  s.last_store_ns = end - start;
  return outcomes;
}

// --- the read side: works on a read-only connection, from the tables alone ----------------------

namespace {

// Statements on day partitions, prepared once per query call.
class PartitionStatements {
 public:
  PartitionStatements(sqlite3* db, const char* tmpl) : db_(db), tmpl_(tmpl) {}
  // Null when the day has no partition (dropped meanwhile) or preparing failed.
  sqlite3_stmt* get(std::int64_t day) {
    auto it = stmts_.find(day);
    if (it == stmts_.end()) {
      sqlite3_stmt* raw = nullptr;
      sqlite3_prepare_v2(db_, subst(tmpl_, partition_name(day)).c_str(), -1, &raw, nullptr);
      it = stmts_.emplace(day, Stmt(raw)).first;
    }
    return it->second.get();
  }

 private:
  sqlite3* db_;
  const char* tmpl_;
  std::map<std::int64_t, Stmt> stmts_;
};

// sent, received, lost, p50_ns, p99_ns from five columns starting at `first`.
void read_figures(sqlite3_stmt* s, int first, IntervalFigures& f) {
  f.sent = static_cast<std::uint32_t>(sqlite3_column_int64(s, first));
  f.received = static_cast<std::uint32_t>(sqlite3_column_int64(s, first + 1));
  f.lost = static_cast<std::uint32_t>(sqlite3_column_int64(s, first + 2));
  const double answered = static_cast<double>(f.received) + static_cast<double>(f.lost);
  f.loss_ratio = answered > 0.0 ? static_cast<double>(f.lost) / answered : 0.0;
  f.p50_ns = sqlite3_column_int64(s, first + 3);
  f.p99_ns = sqlite3_column_int64(s, first + 4);
}

}  // namespace

Result<std::vector<std::int64_t>> SqliteStore::partition_days() {
  std::vector<std::int64_t> days;
  if (each_row(impl_->db.get(), "SELECT day FROM partitions ORDER BY day", kNoBind,
               [&](sqlite3_stmt* s) { days.push_back(sqlite3_column_int64(s, 0)); }) != SQLITE_OK) {
    return failure(impl_->error("partitions query"));
  }
  return days;
}

Result<std::vector<LatestLatency>> SqliteStore::latest_latency() {
  sqlite3* h = impl_->db.get();
  struct Agent {
    std::string agent_id, region, pop;
    bool has_latest = false;
    std::int64_t day = 0, batch = 0, end = 0, seq = 0;
  };
  std::unordered_map<std::int64_t, Agent> agents;
  std::unordered_map<std::int64_t, std::pair<std::string, std::string>> targets;
  struct Pair {
    std::int64_t agent, target;
    bool implied;
    std::int64_t day, batch, idx, end, seq;
  };
  std::vector<Pair> pairs;
  int rc = each_row(h,
                    "SELECT id, agent_id, region, pop, latest_day, latest_batch, latest_interval_end_ns, latest_seq "
                    "FROM agents",
                    kNoBind, [&](sqlite3_stmt* s) {
                      Agent a{column_text(s, 1), column_text(s, 2), column_text(s, 3),
                              sqlite3_column_type(s, 4) != SQLITE_NULL, sqlite3_column_int64(s, 4),
                              sqlite3_column_int64(s, 5), sqlite3_column_int64(s, 6), sqlite3_column_int64(s, 7)};
                      agents.emplace(sqlite3_column_int64(s, 0), std::move(a));
                    });
  if (rc == SQLITE_OK) {
    rc = each_row(h, "SELECT id, name, protocol FROM targets", kNoBind, [&](sqlite3_stmt* s) {
      targets.emplace(sqlite3_column_int64(s, 0), std::make_pair(column_text(s, 1), column_text(s, 2)));
    });
  }
  if (rc == SQLITE_OK) {
    rc = each_row(h, "SELECT * FROM pairs", kNoBind, [&](sqlite3_stmt* s) {
      const auto i = [s](int c) { return sqlite3_column_int64(s, c); };
      pairs.push_back({i(0), i(1), sqlite3_column_type(s, 2) == SQLITE_NULL, i(2), i(3), i(4), i(5), i(6)});
    });
  }
  if (rc != SQLITE_OK) {
    return failure(impl_->error("latest latency query"));
  }

  PartitionStatements batch_rows(h, "SELECT id & 16777215, target, sent, received, lost, p50_ns, p99_ns, "
                                    "jitter_mean_ns, jitter_p99_ns, one_way_status, forward_p50_ns, backward_p50_ns "
                                    "FROM latency_{P} WHERE id BETWEEN ?1 AND ?2");
  PartitionStatements one_row(h, "SELECT id & 16777215, target, sent, received, lost, p50_ns, p99_ns, "
                                 "jitter_mean_ns, jitter_p99_ns, one_way_status, forward_p50_ns, backward_p50_ns "
                                 "FROM latency_{P} WHERE id = ?1");

  const auto fill = [](sqlite3_stmt* s, LatestLatency& r) {
    read_figures(s, 2, r);
    r.jitter_mean_ns = sqlite3_column_double(s, 7);
    r.jitter_p99_ns = sqlite3_column_int64(s, 8);
    r.one_way_status.reset();
    if (sqlite3_column_type(s, 9) != SQLITE_NULL) r.one_way_status = static_cast<int>(sqlite3_column_int64(s, 9));
    r.forward_p50_ns = sqlite3_column_int64(s, 10);
    r.backward_p50_ns = sqlite3_column_int64(s, 11);
  };
  // The newest batch of each agent with implied pairs, read once: target -> best row in it.
  struct Best {
    bool sent = false;
    std::int64_t idx = -1;
    LatestLatency row;
  };
  std::unordered_map<std::int64_t, std::unordered_map<std::int64_t, Best>> newest;
  std::vector<LatestLatency> rows;
  rows.reserve(pairs.size());
  for (const Pair& p : pairs) {
    const auto a = agents.find(p.agent);
    const auto t = targets.find(p.target);
    if (a == agents.end() || t == targets.end()) continue;
    LatestLatency r;
    bool found = false;
    if (p.implied) {
      if (!a->second.has_latest) continue;
      auto n = newest.find(p.agent);
      if (n == newest.end()) {
        n = newest.emplace(p.agent, std::unordered_map<std::int64_t, Best>{}).first;
        if (sqlite3_stmt* s = batch_rows.get(a->second.day)) {
          Binder(s).i64(a->second.batch << kChildShift).i64((a->second.batch << kChildShift) | kChildMask);
          rc = step_rows(s, [&](sqlite3_stmt* row) {
            Best& b = n->second[sqlite3_column_int64(row, 1)];
            const bool sent = sqlite3_column_int64(row, 2) > 0;
            const std::int64_t idx = sqlite3_column_int64(row, 0);
            if (b.idx < 0 || std::tie(sent, idx) > std::tie(b.sent, b.idx)) {
              b.sent = sent;
              b.idx = idx;
              fill(row, b.row);
            }
          });
          if (rc != SQLITE_OK) break;
        }
      }
      const auto b = n->second.find(p.target);
      if (b != n->second.end()) {
        r = b->second.row;
        r.seq = static_cast<std::uint64_t>(a->second.seq);
        r.interval_end_ns = a->second.end;
        found = true;
      }
    } else if (sqlite3_stmt* s = one_row.get(p.day)) {
      Binder(s).i64((p.batch << kChildShift) | p.idx);
      rc = step_rows(s, [&](sqlite3_stmt* row) {
        fill(row, r);
        found = true;
      });
      if (rc != SQLITE_OK) break;
      r.seq = static_cast<std::uint64_t>(p.seq);
      r.interval_end_ns = p.end;
    }
    if (!found) continue;
    r.agent_id = a->second.agent_id;
    r.region = a->second.region;
    r.pop = a->second.pop;
    r.target = t->second.first;
    r.protocol = t->second.second;
    rows.push_back(std::move(r));
  }
  if (rc != SQLITE_OK) {
    return failure(impl_->error("latest latency query"));
  }
  std::sort(rows.begin(), rows.end(), [](const LatestLatency& x, const LatestLatency& y) {
    return std::tie(x.pop, x.agent_id, x.target, x.protocol) < std::tie(y.pop, y.agent_id, y.target, y.protocol);
  });
  return rows;
}

Result<std::vector<LatestLoad>> SqliteStore::latest_load_per_pop() {
  sqlite3* h = impl_->db.get();
  struct Candidate {
    std::string agent_id;
    std::int64_t day, row, time, seq;
  };
  // Per PoP, the agent that sampled last (ties: the greater agent id, then seq).
  std::map<std::string, Candidate> best;
  int rc = each_row(h, "SELECT pop, agent_id, load_day, load_row, load_time_ns, load_seq FROM agents "
                       "WHERE load_day IS NOT NULL",
                    kNoBind, [&](sqlite3_stmt* s) {
                      Candidate c{column_text(s, 1), sqlite3_column_int64(s, 2), sqlite3_column_int64(s, 3),
                                  sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5)};
                      auto [it, inserted] = best.emplace(column_text(s, 0), c);
                      if (!inserted && std::tie(c.time, c.agent_id, c.seq) >
                                           std::tie(it->second.time, it->second.agent_id, it->second.seq)) {
                        it->second = std::move(c);
                      }
                    });
  PartitionStatements load_row(h, "SELECT time_ns, cpu_busy, mem_total, mem_available, load1, psi_cpu_some "
                                  "FROM load_{P} WHERE id = ?1");
  std::vector<LatestLoad> rows;
  for (const auto& entry : best) {
    // Named references, not a structured binding: clang 14 (the fuzz build) cannot capture those.
    const std::string& pop = entry.first;
    const auto& c = entry.second;
    if (rc != SQLITE_OK) break;
    sqlite3_stmt* s = load_row.get(c.day);
    if (s == nullptr) continue;
    Binder(s).i64(c.row);
    rc = step_rows(s, [&](sqlite3_stmt* row) {
      LatestLoad r;
      r.pop = pop;
      r.agent_id = c.agent_id;
      r.time_ns = sqlite3_column_int64(row, 0);
      r.cpu_busy = column_opt_real(row, 1);
      r.mem_total = column_opt_i64(row, 2);
      r.mem_available = column_opt_i64(row, 3);
      r.load1 = column_opt_real(row, 4);
      r.psi_cpu_some = column_opt_real(row, 5);
      rows.push_back(std::move(r));
    });
  }
  if (rc != SQLITE_OK) return failure(impl_->error("latest load query"));
  return rows;
}

Result<std::vector<AgentSummary>> SqliteStore::agents() {
  sqlite3* h = impl_->db.get();
  std::vector<AgentSummary> rows;
  std::vector<std::tuple<std::size_t, std::int64_t, std::int64_t>> selfs;  // row, day, batch
  int rc = each_row(h,
                    "SELECT agent_id, region, pop, COALESCE(max_seq, 0), batch_count, first_seen_ns, last_seen_ns, "
                    "spool_dropped, self_day, self_batch, self_seq, "
                    "(SELECT lower(hex(incarnation)) FROM incarnations WHERE id = agents.incarnation) "
                    "FROM agents ORDER BY agent_id",
                    kNoBind, [&](sqlite3_stmt* s) {
                      AgentSummary r;
                      r.agent_id = column_text(s, 0);
                      r.region = column_text(s, 1);
                      r.pop = column_text(s, 2);
                      r.max_seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 3));
                      r.batch_count = sqlite3_column_int64(s, 4);
                      r.first_seen_ns = sqlite3_column_int64(s, 5);
                      r.last_seen_ns = sqlite3_column_int64(s, 6);
                      r.spool_dropped = static_cast<std::uint64_t>(sqlite3_column_int64(s, 7));
                      r.incarnation = column_text(s, 11);
                      if (sqlite3_column_type(s, 8) != SQLITE_NULL) {
                        selfs.emplace_back(rows.size(), sqlite3_column_int64(s, 8), sqlite3_column_int64(s, 9));
                      }
                      rows.push_back(std::move(r));
                    });
  // s.*: columns by name, so a read-only query of a partition made before a field existed reads 0.
  PartitionStatements self_row(h, "SELECT b.seq, s.* FROM self_{P} AS s JOIN batches_{P} AS b "
                                  "ON b.id = s.batch WHERE s.batch = ?1");
  for (const auto& [i, day, batch] : selfs) {
    if (rc != SQLITE_OK) break;
    sqlite3_stmt* s = self_row.get(day);
    if (s == nullptr) continue;
    Binder(s).i64(batch);
    AgentSummary& r = rows[i];
    rc = step_rows(s, [&](sqlite3_stmt* row) {
      AgentSelfRow m;
      m.seq = static_cast<std::uint64_t>(sqlite3_column_int64(row, 0));
      const int columns = sqlite3_column_count(row);
      wire::for_each_agent_self_field(m, [&](const wire::AgentSelfField& f, auto& v) {
        for (int c = 2; c < columns; ++c) {
          if (std::strcmp(sqlite3_column_name(row, c), f.name) == 0) {
            v = static_cast<std::remove_reference_t<decltype(v)>>(sqlite3_column_int64(row, c));
            break;
          }
        }
      });
      r.self = m;
    });
  }
  if (rc != SQLITE_OK) return failure(impl_->error("agents query"));
  return rows;
}

Result<std::vector<std::uint64_t>> SqliteStore::seqs(std::string_view agent_id) {
  auto keys = batch_keys(agent_id);
  if (!keys) return keys.status();
  std::vector<std::int64_t> seqs(keys->size());
  std::transform(keys->begin(), keys->end(), seqs.begin(),
                 [](const BatchKey& k) { return static_cast<std::int64_t>(k.seq); });
  // Ascending by value as SQLite orders the stored int64.
  std::sort(seqs.begin(), seqs.end());
  std::vector<std::uint64_t> out(seqs.size());
  std::transform(seqs.begin(), seqs.end(), out.begin(), [](std::int64_t v) { return static_cast<std::uint64_t>(v); });
  return out;
}

Result<std::vector<BatchKey>> SqliteStore::batch_keys(std::string_view agent_id) {
  sqlite3* h = impl_->db.get();
  std::int64_t id = -1;
  std::vector<std::int64_t> days;
  std::unordered_map<std::int64_t, Incarnation> incarnations;
  int rc = each_row(
      h, "SELECT id FROM agents WHERE agent_id = ?1", [&](sqlite3_stmt* s) { return Binder(s).text(agent_id).rc(); },
      [&](sqlite3_stmt* s) { id = sqlite3_column_int64(s, 0); });
  if (rc == SQLITE_OK) {
    rc = each_row(h, "SELECT day FROM partitions ORDER BY day", kNoBind,
                  [&](sqlite3_stmt* s) { days.push_back(sqlite3_column_int64(s, 0)); });
  }
  if (rc == SQLITE_OK) {
    rc = each_row(h, "SELECT id, incarnation FROM incarnations", kNoBind, [&](sqlite3_stmt* s) {
      Incarnation value{};
      if (sqlite3_column_bytes(s, 1) == static_cast<int>(value.size())) {
        std::memcpy(value.data(), sqlite3_column_blob(s, 1), value.size());
      }
      incarnations.emplace(sqlite3_column_int64(s, 0), value);
    });
  }
  std::vector<std::pair<std::int64_t, std::int64_t>> keys;  // incarnations.id, seq
  for (std::size_t i = 0; rc == SQLITE_OK && id >= 0 && i < days.size(); ++i) {
    rc = each_row(
        h, subst("SELECT incarnation, seq FROM batches_{P} WHERE agent = ?1", partition_name(days[i])),
        [&](sqlite3_stmt* s) { return Binder(s).i64(id).rc(); },
        [&](sqlite3_stmt* s) { keys.emplace_back(sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1)); });
  }
  if (rc != SQLITE_OK) {
    return failure(impl_->error("batch keys query"));
  }
  // Ids grow in order of first arrival; seqs ascend by value as SQLite orders the stored int64.
  std::sort(keys.begin(), keys.end());
  std::vector<BatchKey> out;
  out.reserve(keys.size());
  for (const auto& [incarnation, seq] : keys) {
    const auto it = incarnations.find(incarnation);
    out.push_back({it != incarnations.end() ? it->second : kLegacyIncarnation, static_cast<std::uint64_t>(seq)});
  }
  return out;
}

platform::Status SqliteStore::pair_history(const PairHistoryQuery& q, const std::function<void(const PairPoint&)>& each) {
  sqlite3* h = impl_->db.get();
  std::vector<std::pair<std::int64_t, std::string>> sources;  // agent id, agent_id
  int rc = each_row(
      h, q.agent_id.empty() ? "SELECT id, agent_id FROM agents WHERE pop = ?1" : "SELECT id, agent_id FROM agents WHERE agent_id = ?1",
      [&](sqlite3_stmt* s) { return Binder(s).text(q.agent_id.empty() ? q.pop : q.agent_id).rc(); },
      [&](sqlite3_stmt* s) { sources.emplace_back(sqlite3_column_int64(s, 0), column_text(s, 1)); });
  std::unordered_map<std::int64_t, std::string> target_ids;  // id -> protocol
  if (rc == SQLITE_OK) {
    rc = each_row(
        // A mesh target is named "POP/AGENT": a PoP's name takes in its agents ('0' follows '/').
        h, "SELECT id, protocol FROM targets WHERE (name = ?1 OR (name >= ?1 || '/' AND name < ?1 || '0')) "
           "AND (?2 = '' OR protocol = ?2)",
        [&](sqlite3_stmt* s) { return Binder(s).text(q.target).text(q.protocol).rc(); },
        [&](sqlite3_stmt* s) { target_ids.emplace(sqlite3_column_int64(s, 0), column_text(s, 1)); });
  }
  std::vector<std::int64_t> days;
  if (rc == SQLITE_OK) {
    // A day holds interval ends in [day, day + 1): only the days the range touches.
    rc = each_row(
        h, "SELECT day FROM partitions WHERE day BETWEEN ?1 AND ?2 ORDER BY day",
        [&](sqlite3_stmt* s) { return Binder(s).i64(day_of(q.from_ns)).i64(day_of(q.to_ns)).rc(); },
        [&](sqlite3_stmt* s) { days.push_back(sqlite3_column_int64(s, 0)); });
  }
  PairPoint p;  // one row at a time: its strings keep their buffers from row to row
  // The agent's batches in range through the batch key index, then each batch's summaries by id
  // range (no index on the summaries: they sit together, one batch apart).
  const bool by_pop = q.agent_id.empty();
  PartitionStatements stmts(h, R"sql(
SELECT b.seq, b.interval_start_ns, b.interval_end_ns, l.target, l.sent, l.received, l.lost, l.p50_ns, l.p99_ns
FROM batches_{P} AS b JOIN latency_{P} AS l ON l.id BETWEEN b.id << 24 AND (b.id << 24) + 16777215
WHERE b.agent = ?1 AND b.interval_end_ns >= ?2 AND b.interval_end_ns < ?3 AND l.target = ?4 AND (?5 = '' OR b.pop = ?5)
)sql");
  for (const std::int64_t day : days) {
    // Pairs, not structured bindings: clang 14 (the fuzz build) cannot capture those in the lambda.
    for (const auto& [agent, agent_id] : sources) {
      for (const auto& target_id : target_ids) {
        const std::int64_t target = target_id.first;
        const std::string& protocol = target_id.second;
        const std::string& agent_name = agent_id;
        if (rc != SQLITE_OK) break;
        sqlite3_stmt* s = stmts.get(day);
        if (s == nullptr) continue;
        Binder(s).i64(agent).i64(q.from_ns).i64(q.to_ns).i64(target).text(by_pop ? q.pop : std::string_view{});
        p.agent_id = agent_name;
        p.protocol = protocol;
        rc = step_rows(s, [&](sqlite3_stmt* row) {
          p.seq = static_cast<std::uint64_t>(sqlite3_column_int64(row, 0));
          p.interval_start_ns = sqlite3_column_int64(row, 1);
          p.interval_end_ns = sqlite3_column_int64(row, 2);
          read_figures(row, 4, p);
          each(p);
        });
      }
    }
  }
  if (rc != SQLITE_OK) {
    return failure(impl_->error("pair history query"));
  }
  return {};
}

Result<std::vector<PairPoint>> SqliteStore::pair_history(const PairHistoryQuery& q) {
  std::vector<PairPoint> rows;
  if (platform::Status st = pair_history(q, [&rows](const PairPoint& p) { rows.push_back(p); }); !st) return st;
  std::sort(rows.begin(), rows.end(), [](const PairPoint& x, const PairPoint& y) {
    return std::tie(x.interval_end_ns, x.agent_id, x.protocol, x.seq) <
           std::tie(y.interval_end_ns, y.agent_id, y.protocol, y.seq);
  });
  return rows;
}

std::vector<std::pair<std::uint16_t, std::uint32_t>> decode_histogram_blob(std::string_view blob) {
  std::vector<std::pair<std::uint16_t, std::uint32_t>> out;
  std::size_t i = 0;
  const auto varint = [&](std::uint64_t& v) {
    v = 0;
    for (int shift = 0; i < blob.size() && shift < 64; shift += 7) {
      const auto byte = static_cast<unsigned char>(blob[i++]);
      v |= std::uint64_t{byte & 0x7fu} << shift;
      if ((byte & 0x80u) == 0) return true;
    }
    return false;
  };
  std::int64_t index = 0;
  std::uint64_t zigzag = 0, count = 0;
  while (i < blob.size() && varint(zigzag) && varint(count)) {
    index += static_cast<std::int64_t>(zigzag >> 1) ^ -static_cast<std::int64_t>(zigzag & 1);
    out.emplace_back(static_cast<std::uint16_t>(index), static_cast<std::uint32_t>(count));
  }
  return out;
}

}  // namespace vantage::collector::store
