// SqliteStore: schema, migration, the group-commit write path and the operator queries.
#include "collector/store/sqlite_store.hpp"

#include <sqlite3.h>

#include <array>
#include <cassert>
#include <charconv>
#include <chrono>
#include <cmath>
#include <utility>

namespace vantage::collector::store {

namespace wire = vantage::wire;

namespace {

// Schema version 1. Later versions append a migration step to kMigrations; a step runs once, in
// the same transaction that bumps user_version, so a crash mid-migration leaves the old schema.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE agents(
  agent_id         TEXT PRIMARY KEY NOT NULL,
  region           TEXT NOT NULL,
  pop              TEXT NOT NULL,
  arch             TEXT NOT NULL DEFAULT '',
  software_version TEXT NOT NULL DEFAULT '',
  first_seen_ns    INTEGER NOT NULL,
  last_seen_ns     INTEGER NOT NULL
);
CREATE TABLE batches(
  agent_id          TEXT NOT NULL REFERENCES agents(agent_id),
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
  PRIMARY KEY (agent_id, seq)
) WITHOUT ROWID;
CREATE INDEX batches_by_pop ON batches(pop, interval_end_ns);
CREATE TABLE latency_summaries(
  agent_id           TEXT NOT NULL,
  seq                INTEGER NOT NULL,
  idx                INTEGER NOT NULL,
  target             TEXT NOT NULL,
  protocol           TEXT NOT NULL,
  sent               INTEGER NOT NULL,
  received           INTEGER NOT NULL,
  lost               INTEGER NOT NULL,
  late               INTEGER NOT NULL,
  reordered          INTEGER NOT NULL,
  duplicates         INTEGER NOT NULL,
  lost_outbound      INTEGER NOT NULL,
  lost_inbound       INTEGER NOT NULL,
  min_ns             INTEGER NOT NULL,
  max_ns             INTEGER NOT NULL,
  mean_ns            REAL,
  stddev_ns          REAL,
  p50_ns             INTEGER NOT NULL,
  p90_ns             INTEGER NOT NULL,
  p99_ns             INTEGER NOT NULL,
  p999_ns            INTEGER NOT NULL,
  jitter_mean_ns     REAL,
  jitter_p99_ns      INTEGER NOT NULL,
  timestamp_source   TEXT NOT NULL,
  histogram_scheme   INTEGER NOT NULL,
  histogram          BLOB,
  send_errors        INTEGER NOT NULL,
  unexpected         INTEGER NOT NULL,
  invalid            INTEGER NOT NULL,
  reflector_restarts INTEGER NOT NULL,
  session_resets     INTEGER NOT NULL,
  ipdv_count         INTEGER NOT NULL,
  histogram_overflow INTEGER NOT NULL,
  histogram_dropped  INTEGER NOT NULL,
  interval_start_ns  INTEGER NOT NULL,
  interval_end_ns    INTEGER NOT NULL,
  PRIMARY KEY (agent_id, seq, idx),
  FOREIGN KEY (agent_id, seq) REFERENCES batches(agent_id, seq) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX latency_by_target ON latency_summaries(agent_id, target, interval_end_ns);
CREATE TABLE load_samples(
  agent_id          TEXT NOT NULL,
  seq               INTEGER NOT NULL,
  idx               INTEGER NOT NULL,
  time_ns           INTEGER NOT NULL,
  arch              TEXT NOT NULL,
  cpu_user          REAL,
  cpu_system        REAL,
  cpu_iowait        REAL,
  cpu_steal         REAL,
  cpu_irq           REAL,
  cpu_softirq       REAL,
  cpu_idle          REAL,
  cpu_busy          REAL,
  cpu_count         INTEGER NOT NULL,
  mem_total         INTEGER,
  mem_available     INTEGER,
  mem_dirty         INTEGER,
  swap_total        INTEGER,
  swap_free         INTEGER,
  load1             REAL,
  load5             REAL,
  load15            REAL,
  psi_cpu_some      REAL,
  psi_memory_some   REAL,
  psi_memory_full   REAL,
  psi_io_some       REAL,
  psi_io_full       REAL,
  cpus_json         TEXT NOT NULL,
  net_json          TEXT NOT NULL,
  temperatures_json TEXT NOT NULL,
  PRIMARY KEY (agent_id, seq, idx),
  FOREIGN KEY (agent_id, seq) REFERENCES batches(agent_id, seq) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX load_by_time ON load_samples(agent_id, time_ns);
CREATE TABLE rtt_samples(
  agent_id     TEXT NOT NULL,
  seq          INTEGER NOT NULL,
  idx          INTEGER NOT NULL,
  target_index INTEGER NOT NULL,
  probe_seq    INTEGER NOT NULL,
  send_time_ns INTEGER NOT NULL,
  rtt_ns       INTEGER NOT NULL,
  PRIMARY KEY (agent_id, seq, idx),
  FOREIGN KEY (agent_id, seq) REFERENCES batches(agent_id, seq) ON DELETE CASCADE
) WITHOUT ROWID;
)sql";

// Version 2: the agents' self-metrics (Batch.self), one row per batch that carries them.
constexpr const char* kSchemaV2 = R"sql(
CREATE TABLE agent_self(
  agent_id           TEXT NOT NULL,
  seq                INTEGER NOT NULL,
  interval_end_ns    INTEGER NOT NULL,
  process_start_ns   INTEGER NOT NULL,
  config_generation  INTEGER NOT NULL,
  rss_bytes          INTEGER NOT NULL,
  cpu_user_ns        INTEGER NOT NULL,
  cpu_system_ns      INTEGER NOT NULL,
  probe_ring_dropped INTEGER NOT NULL,
  load_ring_dropped  INTEGER NOT NULL,
  spool_records      INTEGER NOT NULL,
  spool_bytes        INTEGER NOT NULL,
  reconnects         INTEGER NOT NULL,
  connect_failures   INTEGER NOT NULL,
  tls_failures       INTEGER NOT NULL,
  rejected           INTEGER NOT NULL,
  PRIMARY KEY (agent_id, seq),
  FOREIGN KEY (agent_id, seq) REFERENCES batches(agent_id, seq) ON DELETE CASCADE
) WITHOUT ROWID;
)sql";

constexpr std::array<const char*, 2> kMigrations{kSchemaV1, kSchemaV2};
static_assert(kMigrations.size() == SqliteStore::kSchemaVersion);

constexpr const char* kUpsertAgent = R"sql(
INSERT INTO agents(agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
ON CONFLICT(agent_id) DO UPDATE SET
  region = excluded.region,
  pop = excluded.pop,
  arch = CASE WHEN excluded.arch <> '' THEN excluded.arch ELSE agents.arch END,
  software_version = CASE WHEN excluded.software_version <> '' THEN excluded.software_version
                          ELSE agents.software_version END,
  last_seen_ns = MAX(agents.last_seen_ns, excluded.last_seen_ns)
)sql";

constexpr const char* kInsertBatch = R"sql(
INSERT OR IGNORE INTO batches(agent_id, seq, interval_start_ns, interval_end_ns, received_ns, region,
                              pop, latency_count, load_count, rtt_sample_count, spool_dropped)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
)sql";

constexpr const char* kInsertLatency = R"sql(
INSERT INTO latency_summaries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
  ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36)
)sql";

constexpr const char* kInsertLoad = R"sql(
INSERT INTO load_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
  ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)
)sql";

constexpr const char* kInsertSelf = R"sql(
INSERT INTO agent_self VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
)sql";

constexpr const char* kInsertRtt = R"sql(
INSERT INTO rtt_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
)sql";

// Ties on interval_end_ns (two batches for the same interval) go to the higher seq. Intervals in
// which no probe was sent (an agent's last, partial interval while it drains) say nothing about
// the path and rank below any interval that measured it.
constexpr const char* kLatestLatency = R"sql(
SELECT l.agent_id, a.region, a.pop, l.target, l.protocol, l.seq, l.interval_end_ns, l.sent, l.received,
       l.lost, l.p50_ns, l.p99_ns, l.jitter_mean_ns, l.jitter_p99_ns
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY agent_id, target
                                   ORDER BY sent > 0 DESC, interval_end_ns DESC, seq DESC, idx DESC) AS rn
      FROM latency_summaries) AS l
JOIN agents AS a USING (agent_id)
WHERE l.rn = 1
ORDER BY a.pop, l.agent_id, l.target
)sql";

constexpr const char* kLatestLoad = R"sql(
SELECT pop, agent_id, time_ns, cpu_busy, mem_total, mem_available, load1, psi_cpu_some
FROM (SELECT b.pop, s.*, ROW_NUMBER() OVER (PARTITION BY b.pop
                                            ORDER BY s.time_ns DESC, s.agent_id DESC, s.seq DESC) AS rn
      FROM load_samples AS s JOIN batches AS b USING (agent_id, seq))
WHERE rn = 1
ORDER BY pop
)sql";

constexpr const char* kAgents = R"sql(
SELECT a.agent_id, a.region, a.pop, COALESCE(MAX(b.seq), 0), COUNT(b.seq), a.first_seen_ns, a.last_seen_ns,
       COALESCE((SELECT spool_dropped FROM batches WHERE agent_id = a.agent_id ORDER BY seq DESC LIMIT 1), 0),
       s.seq, s.process_start_ns, s.config_generation, s.rss_bytes, s.cpu_user_ns, s.cpu_system_ns,
       s.probe_ring_dropped, s.load_ring_dropped, s.spool_records, s.spool_bytes, s.reconnects,
       s.connect_failures, s.tls_failures, s.rejected
FROM agents AS a LEFT JOIN batches AS b USING (agent_id)
LEFT JOIN agent_self AS s
  ON s.agent_id = a.agent_id AND s.seq = (SELECT MAX(seq) FROM agent_self WHERE agent_id = a.agent_id)
GROUP BY a.agent_id
ORDER BY a.agent_id
)sql";

constexpr const char* kSeqs = "SELECT seq FROM batches WHERE agent_id = ?1 ORDER BY seq";

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string_view view(const flatbuffers::String* s) {
  return s == nullptr ? std::string_view{} : std::string_view(s->data(), s->size());
}

const char* timestamp_source_name(wire::TimestampSource s) {
  switch (s) {
    case wire::TimestampSource::Userspace:
      return "userspace";
    case wire::TimestampSource::Kernel:
      return "kernel";
  }
  return "unknown";
}

// Binds parameters left to right and remembers the first failure, so a 36-column insert reads as
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
  // the caller's FlatBuffer or in locals until the statement has been stepped and reset.
  Binder& text(std::string_view v) {
    const char* data = v.data() == nullptr ? "" : v.data();  // a null pointer would bind NULL
    return check(sqlite3_bind_text(stmt_, ++index_, data, static_cast<int>(v.size()), nullptr));
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

// Steps an INSERT to completion and leaves the statement reset and unbound, so no pointer into a
// caller's buffer outlives the call.
int run(sqlite3_stmt* stmt) {
  const int rc = sqlite3_step(stmt);
  sqlite3_reset(stmt);
  sqlite3_clear_bindings(stmt);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// --- compact JSON for the per-CPU, interface and temperature lists -----------------------------

void json_number(std::string& out, double v) {
  if (!std::isfinite(v)) {  // JSON has no NaN/Infinity
    out += "null";
    return;
  }
  std::array<char, 32> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  out.append(buf.data(), ec == std::errc{} ? end : buf.data());
}

void json_number(std::string& out, float v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  // Shortest form of the float itself: 0.25f prints as 0.25, not as its double expansion.
  std::array<char, 32> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  out.append(buf.data(), ec == std::errc{} ? end : buf.data());
}

void json_number(std::string& out, std::int64_t v) { out += std::to_string(v); }

// Names come from the agent's host (interface and sensor names): escape everything JSON requires.
void json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\u00";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  out += '"';
}

template <typename V>
void json_field(std::string& out, const char* name, V v, bool first = false) {
  if (!first) out += ',';
  out += '"';
  out += name;
  out += "\":";
  json_number(out, v);
}

std::string cpus_json(const flatbuffers::Vector<const wire::CpuUsage*>* cpus) {
  std::string out = "[";
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
  return out;
}

std::string net_json(const flatbuffers::Vector<flatbuffers::Offset<wire::NetInterface>>* net) {
  std::string out = "[";
  if (net != nullptr) {
    for (const wire::NetInterface* n : *net) {
      if (out.size() > 1) out += ',';
      out += "{\"name\":";
      json_string(out, view(n->name()));
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
  return out;
}

std::string temperatures_json(const flatbuffers::Vector<flatbuffers::Offset<wire::Temperature>>* temps) {
  std::string out = "[";
  if (temps != nullptr) {
    for (const wire::Temperature* t : *temps) {
      if (out.size() > 1) out += ',';
      out += "{\"sensor\":";
      json_string(out, view(t->sensor()));
      json_field(out, "celsius", t->celsius());
      out += '}';
    }
  }
  out += ']';
  return out;
}

std::string histogram_blob(const flatbuffers::Vector<const wire::HistogramBucket*>* buckets) {
  std::string out;
  if (buckets == nullptr) return out;
  out.reserve(buckets->size() * kHistogramBucketBytes);
  for (const wire::HistogramBucket* b : *buckets) {
    const std::uint16_t index = b->index();
    const std::uint32_t count = b->count();
    out += static_cast<char>(index & 0xff);
    out += static_cast<char>(index >> 8);
    for (int shift = 0; shift < 32; shift += 8) out += static_cast<char>((count >> shift) & 0xff);
  }
  return out;
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

}  // namespace

const char* protocol_name(wire::Protocol p) noexcept {
  switch (p) {
    case wire::Protocol::UdpEcho:
      return "udp_echo";
    case wire::Protocol::TcpConnect:
      return "tcp_connect";
    case wire::Protocol::Icmp:
      return "icmp";
  }
  return "unknown";  // a newer agent's protocol: stored, labelled, not lost
}

void SqliteStore::DbCloser::operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
void SqliteStore::StmtFinalizer::operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }

SqliteStore::SqliteStore(std::string path, Db db) : path_(std::move(path)), db_(std::move(db)) {}
SqliteStore::SqliteStore(SqliteStore&&) noexcept = default;
SqliteStore& SqliteStore::operator=(SqliteStore&&) noexcept = default;
SqliteStore::~SqliteStore() = default;

std::string SqliteStore::error(std::string_view what) const {
  std::string msg = "sqlite store ";
  msg += path_;
  msg += ": ";
  msg += what;
  msg += ": ";
  msg += sqlite3_errmsg(db_.get());
  msg += " (";
  msg += std::to_string(sqlite3_extended_errcode(db_.get()));
  msg += ')';
  return msg;
}

namespace {

// Runs SQL that returns no rows the caller needs (pragmas, DDL, transaction control).
int exec(sqlite3* db, const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr); }

int query_int(sqlite3* db, const char* sql, std::int64_t& out) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(raw);
  if (rc == SQLITE_ROW) {
    out = sqlite3_column_int64(raw, 0);
    rc = SQLITE_OK;
  }
  sqlite3_finalize(raw);
  return rc;
}

}  // namespace

Result<SqliteStore> SqliteStore::open(const std::string& path, const OpenOptions& options) {
  Result<SqliteStore> result;
  sqlite3* raw = nullptr;
  // NOMUTEX: one owning thread per connection (documented on the class), so SQLite's own
  // serialisation would be pure overhead.
  const int flags = (options.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                    SQLITE_OPEN_NOMUTEX;
  const int open_rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  Db db(raw);  // sqlite3_open_v2 hands back a handle even on failure, to carry the message
  if (db == nullptr) {
    result.error = "sqlite store " + path + ": cannot open: out of memory";
    return result;
  }
  SqliteStore s(path, std::move(db));
  if (open_rc != SQLITE_OK) {
    result.error = s.error("cannot open");
    return result;
  }
  sqlite3* h = s.db_.get();
  sqlite3_extended_result_codes(h, 1);
  sqlite3_busy_timeout(h, options.busy_timeout_ms);

  // Opening is lazy: the first statement that reads the file tells whether it is a database.
  std::int64_t version = 0;
  if (query_int(h, "PRAGMA user_version", version) != SQLITE_OK) {
    result.error = s.error("cannot read schema version");
    return result;
  }
  if (version > kSchemaVersion) {
    result.error = "sqlite store " + path + ": schema version " + std::to_string(version) +
                   " is newer than this collector's " + std::to_string(kSchemaVersion);
    return result;
  }
  if (options.read_only) {
    if (version != kSchemaVersion) {
      result.error = "sqlite store " + path + ": schema version " + std::to_string(version) + ", expected " +
                     std::to_string(kSchemaVersion) + " (read-only: not migrated)";
      return result;
    }
  } else {
    // WAL: readers (`vantage-collector query`, the status page) never block the ingest and a
    // commit is one sequential append. synchronous=FULL: an ack tells the agent to delete the
    // batch from its spool, so a commit must survive power loss; in WAL mode NORMAL skips the
    // fsync of each commit and could lose acked batches. Group commit pays it once per call.
    std::int64_t ignored = 0;
    if (query_int(h, "PRAGMA journal_mode=WAL", ignored) != SQLITE_OK) {
      result.error = s.error("cannot enable WAL");
      return result;
    }
    if (exec(h, "PRAGMA synchronous=FULL") != SQLITE_OK) {
      result.error = s.error("cannot set synchronous=FULL");
      return result;
    }
    for (std::int64_t v = version; v < kSchemaVersion; ++v) {
      const std::string step = std::string("BEGIN IMMEDIATE;") + kMigrations[static_cast<std::size_t>(v)] +
                               "PRAGMA user_version=" + std::to_string(v + 1) + ";COMMIT;";
      if (exec(h, step.c_str()) != SQLITE_OK) {
        result.error = s.error("cannot migrate schema to version " + std::to_string(v + 1));
        exec(h, "ROLLBACK");
        return result;
      }
    }
  }
  if (exec(h, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
    result.error = s.error("cannot enable foreign keys");
    return result;
  }
  if (std::string err = s.prepare_all(); !err.empty()) {
    result.error = std::move(err);
    return result;
  }
  result.value.emplace(std::move(s));
  return result;
}

std::string SqliteStore::prepare_all() {
  const std::pair<Stmt*, const char*> all[] = {
      {&begin_, "BEGIN IMMEDIATE"},  // take the write lock now: busy_timeout applies here, not mid-way
      {&commit_, "COMMIT"},           {&rollback_, "ROLLBACK"},           {&upsert_agent_, kUpsertAgent},
      {&insert_batch_, kInsertBatch}, {&insert_latency_, kInsertLatency}, {&insert_load_, kInsertLoad},
      {&insert_rtt_, kInsertRtt},     {&insert_self_, kInsertSelf},
  };
  for (const auto& [stmt, sql] : all) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK) {
      return error(std::string("cannot prepare ") + sql);
    }
    stmt->reset(raw);
  }
  return {};
}

std::string SqliteStore::store_one(const IncomingBatch& in, StoreOutcome& outcome) {
  assert(in.batch != nullptr && "IncomingBatch without a verified batch");
  const wire::Batch& b = *in.batch;
  const std::string_view region = in.region.empty() ? view(b.region()) : in.region;
  const std::string_view pop = in.pop.empty() ? view(b.pop()) : in.pop;

  Binder agent(upsert_agent_.get());
  agent.text(in.agent_id).text(region).text(pop).text(in.arch).text(in.software_version).i64(in.received_ns);
  if (agent.rc() != SQLITE_OK || run(upsert_agent_.get()) != SQLITE_OK) return error("upsert agent");

  const auto* latency = b.latency();
  const auto* load = b.load();
  const auto* rtts = b.rtt_samples();
  Binder batch(insert_batch_.get());
  batch.text(in.agent_id)
      .u64(b.seq())
      .i64(b.interval_start_ns())
      .i64(b.interval_end_ns())
      .i64(in.received_ns)
      .text(region)
      .text(pop)
      .i64(latency == nullptr ? 0 : latency->size())
      .i64(load == nullptr ? 0 : load->size())
      .i64(rtts == nullptr ? 0 : rtts->size())
      .u64(b.spool_dropped());  // v1.1 field: a first-version batch reads 0
  if (batch.rc() != SQLITE_OK || run(insert_batch_.get()) != SQLITE_OK) return error("insert batch");
  // OR IGNORE turned a second (agent, seq) into a no-op: the first copy stands, no children.
  if (sqlite3_changes(db_.get()) == 0) {
    outcome = StoreOutcome::kDuplicate;
    return {};
  }
  outcome = StoreOutcome::kStored;

  if (latency != nullptr) {
    std::int64_t idx = 0;
    for (const wire::LatencySummary* l : *latency) {
      const std::string histogram = histogram_blob(l->histogram());
      Binder r(insert_latency_.get());
      r.text(in.agent_id)
          .u64(b.seq())
          .i64(idx++)
          .text(view(l->target()))
          .text(protocol_name(l->protocol()))
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
          .text(timestamp_source_name(l->timestamp_source()))
          .i64(l->histogram_scheme())
          .blob(histogram)
          .i64(l->send_errors())
          .i64(l->unexpected())
          .i64(l->invalid())
          .i64(l->reflector_restarts())
          .i64(l->session_resets())
          .i64(l->ipdv_count())
          .i64(l->histogram_overflow())
          .i64(l->histogram_dropped())
          .i64(b.interval_start_ns())
          .i64(b.interval_end_ns());
      if (r.rc() != SQLITE_OK || run(insert_latency_.get()) != SQLITE_OK)
        return error("insert latency summary");
    }
  }

  if (load != nullptr) {
    std::int64_t idx = 0;
    for (const wire::LoadSample* s : *load) {
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
      const std::string cpus = cpus_json(s->cpus());
      const std::string net = net_json(s->net());
      const std::string temps = temperatures_json(s->temperatures());
      const auto f = [](float v) { return static_cast<double>(v); };
      Binder r(insert_load_.get());
      r.text(in.agent_id)
          .u64(b.seq())
          .i64(idx++)
          .i64(s->time_ns())
          .text(view(s->arch()))
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
      if (r.rc() != SQLITE_OK || run(insert_load_.get()) != SQLITE_OK) return error("insert load sample");
    }
  }

  if (const wire::AgentSelf* m = b.self()) {
    Binder r(insert_self_.get());
    r.text(in.agent_id)
        .u64(b.seq())
        .i64(b.interval_end_ns())
        .i64(m->process_start_ns())
        .u64(m->config_generation())
        .u64(m->rss_bytes())
        .u64(m->cpu_user_ns())
        .u64(m->cpu_system_ns())
        .u64(m->probe_ring_dropped())
        .u64(m->load_ring_dropped())
        .u64(m->spool_records())
        .u64(m->spool_bytes())
        .u64(m->reconnects())
        .u64(m->connect_failures())
        .u64(m->tls_failures())
        .u64(m->rejected());
    if (r.rc() != SQLITE_OK || run(insert_self_.get()) != SQLITE_OK)
      return error("insert agent self-metrics");
  }

  if (rtts != nullptr) {
    std::int64_t idx = 0;
    for (const wire::RttSample* t : *rtts) {
      Binder r(insert_rtt_.get());
      r.text(in.agent_id)
          .u64(b.seq())
          .i64(idx++)
          .i64(t->target_index())
          .i64(t->seq())
          .i64(t->send_time_ns())
          .i64(t->rtt_ns());
      if (r.rc() != SQLITE_OK || run(insert_rtt_.get()) != SQLITE_OK) return error("insert rtt sample");
    }
  }
  return {};
}

Result<std::vector<StoreOutcome>> SqliteStore::store(std::span<const IncomingBatch> batches) {
  Result<std::vector<StoreOutcome>> result;
  const std::int64_t start = now_ns();
  // A transaction left open by a failed COMMIT whose ROLLBACK failed too would make every later
  // BEGIN fail: close it first, so one bad moment cannot wedge the store.
  if (sqlite3_get_autocommit(db_.get()) == 0) run(rollback_.get());
  if (run(begin_.get()) != SQLITE_OK) {
    result.error = error("begin");
    return result;
  }
  std::vector<StoreOutcome> outcomes(batches.size(), StoreOutcome::kStored);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    if (std::string err = store_one(batches[i], outcomes[i]); !err.empty()) {
      run(rollback_.get());  // may fail if SQLite already rolled back (e.g. SQLITE_FULL): harmless
      result.error = std::move(err);
      return result;
    }
  }
  const std::int64_t commit_start = now_ns();
  if (run(commit_.get()) != SQLITE_OK) {
    result.error = error("commit");
    run(rollback_.get());
    return result;
  }
  const std::int64_t end = now_ns();
  last_commit_ns_ = end - commit_start;
  last_store_ns_ = end - start;
  result.value = std::move(outcomes);
  return result;
}

namespace {

// Prepares `sql`, lets `bind` fill its parameters, and calls `row` for each result row.
template <typename Bind, typename Row>
int each_row(sqlite3* db, const char* sql, Bind&& bind, Row&& row) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
  if (rc != SQLITE_OK) return rc;
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
  rc = bind(raw);
  if (rc != SQLITE_OK) return rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) row(raw);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

constexpr auto kNoBind = [](sqlite3_stmt*) { return SQLITE_OK; };

}  // namespace

Result<std::vector<LatestLatency>> SqliteStore::latest_latency() {
  Result<std::vector<LatestLatency>> result;
  std::vector<LatestLatency> rows;
  const int rc = each_row(db_.get(), kLatestLatency, kNoBind, [&](sqlite3_stmt* s) {
    LatestLatency r;
    r.agent_id = column_text(s, 0);
    r.region = column_text(s, 1);
    r.pop = column_text(s, 2);
    r.target = column_text(s, 3);
    r.protocol = column_text(s, 4);
    r.seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 5));
    r.interval_end_ns = sqlite3_column_int64(s, 6);
    r.sent = static_cast<std::uint32_t>(sqlite3_column_int64(s, 7));
    r.received = static_cast<std::uint32_t>(sqlite3_column_int64(s, 8));
    r.lost = static_cast<std::uint32_t>(sqlite3_column_int64(s, 9));
    const double answered = static_cast<double>(r.received) + static_cast<double>(r.lost);
    r.loss_ratio = answered > 0.0 ? static_cast<double>(r.lost) / answered : 0.0;
    r.p50_ns = sqlite3_column_int64(s, 10);
    r.p99_ns = sqlite3_column_int64(s, 11);
    r.jitter_mean_ns = sqlite3_column_double(s, 12);
    r.jitter_p99_ns = sqlite3_column_int64(s, 13);
    rows.push_back(std::move(r));
  });
  if (rc != SQLITE_OK) {
    result.error = error("latest latency query");
  } else {
    result.value = std::move(rows);
  }
  return result;
}

Result<std::vector<LatestLoad>> SqliteStore::latest_load_per_pop() {
  Result<std::vector<LatestLoad>> result;
  std::vector<LatestLoad> rows;
  const int rc = each_row(db_.get(), kLatestLoad, kNoBind, [&](sqlite3_stmt* s) {
    LatestLoad r;
    r.pop = column_text(s, 0);
    r.agent_id = column_text(s, 1);
    r.time_ns = sqlite3_column_int64(s, 2);
    r.cpu_busy = column_opt_real(s, 3);
    r.mem_total = column_opt_i64(s, 4);
    r.mem_available = column_opt_i64(s, 5);
    r.load1 = column_opt_real(s, 6);
    r.psi_cpu_some = column_opt_real(s, 7);
    rows.push_back(std::move(r));
  });
  if (rc != SQLITE_OK) {
    result.error = error("latest load query");
  } else {
    result.value = std::move(rows);
  }
  return result;
}

Result<std::vector<AgentSummary>> SqliteStore::agents() {
  Result<std::vector<AgentSummary>> result;
  std::vector<AgentSummary> rows;
  const int rc = each_row(db_.get(), kAgents, kNoBind, [&](sqlite3_stmt* s) {
    AgentSummary r;
    r.agent_id = column_text(s, 0);
    r.region = column_text(s, 1);
    r.pop = column_text(s, 2);
    r.max_seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 3));
    r.batch_count = sqlite3_column_int64(s, 4);
    r.first_seen_ns = sqlite3_column_int64(s, 5);
    r.last_seen_ns = sqlite3_column_int64(s, 6);
    r.spool_dropped = static_cast<std::uint64_t>(sqlite3_column_int64(s, 7));
    if (sqlite3_column_type(s, 8) != SQLITE_NULL) {
      const auto u = [s](int i) { return static_cast<std::uint64_t>(sqlite3_column_int64(s, i)); };
      AgentSelfRow m;
      m.seq = u(8);
      m.process_start_ns = sqlite3_column_int64(s, 9);
      m.config_generation = u(10);
      m.rss_bytes = u(11);
      m.cpu_user_ns = u(12);
      m.cpu_system_ns = u(13);
      m.probe_ring_dropped = u(14);
      m.load_ring_dropped = u(15);
      m.spool_records = u(16);
      m.spool_bytes = u(17);
      m.reconnects = u(18);
      m.connect_failures = u(19);
      m.tls_failures = u(20);
      m.rejected = u(21);
      r.self = m;
    }
    rows.push_back(std::move(r));
  });
  if (rc != SQLITE_OK) {
    result.error = error("agents query");
  } else {
    result.value = std::move(rows);
  }
  return result;
}

Result<std::vector<std::uint64_t>> SqliteStore::seqs(std::string_view agent_id) {
  Result<std::vector<std::uint64_t>> result;
  std::vector<std::uint64_t> rows;
  const int rc = each_row(
      db_.get(), kSeqs, [&](sqlite3_stmt* s) { return Binder(s).text(agent_id).rc(); },
      [&](sqlite3_stmt* s) { rows.push_back(static_cast<std::uint64_t>(sqlite3_column_int64(s, 0))); });
  if (rc != SQLITE_OK) {
    result.error = error("seqs query");
  } else {
    result.value = std::move(rows);
  }
  return result;
}

}  // namespace vantage::collector::store
