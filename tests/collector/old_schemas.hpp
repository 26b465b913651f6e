// The SQLite layouts of collector schema versions 1 and 2 exactly as those collectors created
// them: the migration tests build old databases from them, and bench/store_bench inserts into the
// v2 layout as the peer of the current one.
#pragma once

namespace vantage::collector::store::old_schema {

inline constexpr const char* kOldSchemaV1 = R"sql(
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


inline constexpr const char* kOldSchemaV2 = R"sql(
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

}  // namespace vantage::collector::store::old_schema
