// Tests for SqliteStore on real database files: every column of a round trip, dedupe by
// (agent, incarnation, seq) within and across day partitions, group commit, durability across reopen and
// across a SIGKILLed writer, error paths with nothing half-written, retention by partition,
// migration from the v1/v2/v3/v4 layouts, the clock state and one-way figures of a newer agent
// beside an older one's, the operator queries, and histograms of both bucket
// schemes stored as sent.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "agent/aggregate/latency_histogram.hpp"
#include "agent/aggregate/target_stats.hpp"
#include "collector/store/sqlite_store.hpp"
#include "schemas/agent_self_fields.hpp"
#include "tests/collector/old_schemas.hpp"
#include "tests/collector/one_way_batches.hpp"
#include "tests/support/wire_frames.hpp"
#include "vantage/telemetry_generated.h"

namespace {

namespace wire = vantage::wire;
using namespace vantage::collector::store;
using namespace vantage::test;

constexpr std::int64_t kT0 = 1'790'000'000'000'000'000;
constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kDay0 = kT0 / kPartitionNs;  // kT0 is 14:13:20 UTC on this day

// The wall clock the stores in these tests run on: retention must not depend on the real date.
std::int64_t fake_now = kT0 + 3600 * kSecond;
std::int64_t fake_clock() { return fake_now; }

OpenOptions test_options() {
  OpenOptions o;
  o.wall_clock_ns = fake_clock;
  o.cache_kib = 2048;
  return o;
}

using vantage::collector::store::old_schema::kOldSchemaV1;
using vantage::collector::store::old_schema::kOldSchemaV2;


// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/vantage-store-XXXXXX";
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A small batch: one latency summary per target (p50 tells batches apart), one load sample.
// Every self-metric distinct, one of them past 2^32, so a swapped or narrowed column shows:
// process_start_ns, config_generation, rss_bytes, then 101, 102, ... in field order.
wire::AgentSelfValues round_trip_self() {
  wire::AgentSelfValues v;
  int k = 0;
  wire::for_each_agent_self_field(v, [&k](const wire::AgentSelfField&, auto& value) {
    const std::int64_t firsts[] = {kT0 - 3600 * kSecond, 3, 5'000'000'000};
    value = static_cast<std::remove_reference_t<decltype(value)>>(k < 3 ? firsts[k] : 98 + k);
    ++k;
  });
  return v;
}

Bytes simple_batch(const std::string& agent, std::uint64_t seq,
                   const std::vector<std::string>& targets = {"t1"}, std::int64_t p50 = 1'000'000,
                   const std::string& pop = "fra1", double idle = 0.5) {
  flatbuffers::FlatBufferBuilder fbb;
  const std::int64_t start = kT0 + static_cast<std::int64_t>(seq) * kSecond;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (const auto& t : targets) {
    latency.push_back(wire::CreateLatencySummaryDirect(fbb, t.c_str(), wire::Protocol::UdpEcho, 10, 9, 1, 0,
                                                       0, 0, 0, 1, p50 / 2, p50 * 2, static_cast<double>(p50),
                                                       1000.0, p50, p50, p50 + 7, p50 + 9, 300.0, 900));
  }
  std::vector<wire::CpuUsage> cpus{{-1, 0.25f, 0.125f, 0.0f, 0.0f, 0.0f, 0.0f, static_cast<float>(idle), 0}};
  wire::MemoryUsage mem(8ull << 30, 4ull << 30, 0, 0, 0);
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSampleDirect(fbb, start + kSecond / 2, "amd64", &cpus, &mem)};
  return finish_batch(fbb, wire::CreateBatchDirect(fbb, agent.c_str(), seq, start, start + kSecond,
                                                   "eu-central", pop.c_str(), &latency, &load));
}

// Keeps the buffers alive as long as the IncomingBatch pointers into them.
struct Batches {
  std::vector<std::unique_ptr<Bytes>> buffers;
  std::vector<IncomingBatch> incoming;

  void add(Bytes bytes, std::string_view agent, std::string_view pop = "fra1", std::int64_t received_ns = 0) {
    buffers.push_back(std::make_unique<Bytes>(std::move(bytes)));
    const wire::Batch* b = verified_batch(*buffers.back());
    REQUIRE(b != nullptr);
    IncomingBatch in;
    in.batch = b;
    in.agent_id = agent;  // the connection's identity (a string that outlives the store call)
    in.region = "eu-central";
    in.pop = pop;
    in.arch = "amd64";
    in.software_version = "0.1.0";
    in.received_ns = received_ns != 0 ? received_ns : b->interval_end_ns() + 1000;
    incoming.push_back(in);
  }
};

SqliteStore open_store(const std::string& path, const OpenOptions& options = test_options()) {
  auto opened = SqliteStore::open(path, options);
  INFO(opened.error());
  REQUIRE(opened);
  return std::move(*opened);
}

std::vector<std::uint64_t> one_to(std::uint64_t n) {
  std::vector<std::uint64_t> v(n);
  std::iota(v.begin(), v.end(), std::uint64_t{1});
  return v;
}

// Direct SQLite access to check what the store wrote, column by column.
struct Value {
  int type = SQLITE_NULL;
  std::int64_t i = 0;
  double d = 0.0;
  std::string s;  // text or blob bytes
};
using Row = std::map<std::string, Value>;

class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    REQUIRE(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  std::vector<Row> rows(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
    std::vector<Row> out;
    int rc = 0;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      Row row;
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        Value v;
        v.type = sqlite3_column_type(stmt, c);
        v.i = sqlite3_column_int64(stmt, c);
        v.d = sqlite3_column_double(stmt, c);
        if (v.type == SQLITE_TEXT || v.type == SQLITE_BLOB) {
          const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt, c));
          v.s.assign(p == nullptr ? "" : p, static_cast<std::size_t>(sqlite3_column_bytes(stmt, c)));
        }
        row[sqlite3_column_name(stmt, c)] = v;
      }
      out.push_back(std::move(row));
    }
    sqlite3_finalize(stmt);
    REQUIRE(rc == SQLITE_DONE);
    return out;
  }
  std::int64_t integer(const std::string& sql) {
    auto r = rows(sql);
    REQUIRE(r.size() == 1);
    return r[0].begin()->second.i;
  }
  std::string text(const std::string& sql) {
    auto r = rows(sql);
    REQUIRE(r.size() == 1);
    return r[0].begin()->second.s;
  }
  void exec(const std::string& sql) {
    INFO(sql);
    REQUIRE(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  }

 private:
  sqlite3* db_ = nullptr;
};

// Field values for the round trip: distinct per summary (k) and per field (f), so a swapped
// column cannot go unnoticed.
std::uint32_t u(int k, int f) { return static_cast<std::uint32_t>(1000 * (k + 1) + f); }
std::int64_t ns(int k, int f) { return 1'000'000LL * (k + 1) + f; }

constexpr std::uint64_t kSpoolDropped = 77;

// The LatencySummary counters the round trip sets and reads back by column. The first version's
// are built before the other fields and those appended since after them, as the agent builds them.
struct CounterField {
  const char* column;
  void (wire::LatencySummaryBuilder::*add)(std::uint32_t);
  int f;  // u(k, f)
  bool appended;
};
using Builder = wire::LatencySummaryBuilder;
constexpr CounterField kCounters[] = {
    {"sent", &Builder::add_sent, 1, false},
    {"received", &Builder::add_received, 2, false},
    {"lost", &Builder::add_lost, 3, false},
    {"late", &Builder::add_late, 4, false},
    {"reordered", &Builder::add_reordered, 5, false},
    {"duplicates", &Builder::add_duplicates, 6, false},
    {"lost_outbound", &Builder::add_lost_outbound, 7, false},
    {"lost_inbound", &Builder::add_lost_inbound, 8, false},
    {"send_errors", &Builder::add_send_errors, 19, true},
    {"unexpected", &Builder::add_unexpected, 20, true},
    {"invalid", &Builder::add_invalid, 21, true},
    {"reflector_restarts", &Builder::add_reflector_restarts, 22, true},
    {"session_resets", &Builder::add_session_resets, 23, true},
    {"ipdv_count", &Builder::add_ipdv_count, 24, true},
    {"histogram_overflow", &Builder::add_histogram_overflow, 25, true},
    {"histogram_dropped", &Builder::add_histogram_dropped, 26, true},
};

Bytes rich_batch() {
  flatbuffers::FlatBufferBuilder fbb;
  const std::vector<std::vector<wire::HistogramBucket>> buckets{
      {{300, 7}, {301, 90}, {412, 3}}, {{5, 1}}, {}};
  const wire::Protocol protocols[] = {wire::Protocol::UdpEcho, wire::Protocol::TcpConnect,
                                      wire::Protocol::Icmp};
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (int k = 0; k < 3; ++k) {
    auto target = fbb.CreateString("target-" + std::to_string(k) + ":7801");
    auto histogram = buckets[static_cast<std::size_t>(k)].empty()
                         ? flatbuffers::Offset<flatbuffers::Vector<const wire::HistogramBucket*>>()
                         : fbb.CreateVectorOfStructs(buckets[static_cast<std::size_t>(k)]);
    wire::LatencySummaryBuilder lb(fbb);
    lb.add_target(target);
    lb.add_protocol(protocols[k]);
    for (const CounterField& c : kCounters) {
      if (!c.appended) (lb.*c.add)(u(k, c.f));
    }
    lb.add_min_ns(ns(k, 9));
    lb.add_max_ns(ns(k, 10));
    lb.add_mean_ns(static_cast<double>(ns(k, 11)) + 0.5);
    lb.add_stddev_ns(static_cast<double>(ns(k, 12)) + 0.25);
    lb.add_p50_ns(ns(k, 13));
    lb.add_p90_ns(ns(k, 14));
    lb.add_p99_ns(ns(k, 15));
    lb.add_p999_ns(ns(k, 16));
    lb.add_jitter_mean_ns(static_cast<double>(ns(k, 17)) + 0.125);
    lb.add_jitter_p99_ns(ns(k, 18));
    lb.add_timestamp_source(k == 0 ? wire::TimestampSource::Kernel : wire::TimestampSource::Userspace);
    lb.add_histogram_scheme(buckets[static_cast<std::size_t>(k)].empty() ? 0 : 1);
    if (!histogram.IsNull()) lb.add_histogram(histogram);
    for (const CounterField& c : kCounters) {
      if (c.appended) (lb.*c.add)(u(k, c.f));
    }
    latency.push_back(lb.Finish());
  }

  std::vector<wire::CpuUsage> cpus{{-1, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.5f, 0.75f, 0.5f, 0},
                                   {0, 0.5f, 0.1f, 0.0f, 0.0f, 0.0f, 0.02f, 0.38f, 1'800'000},
                                   {1, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 600'000}};
  wire::MemoryUsage mem(8ull << 30, 5ull << 30, 1ull << 30, 1ull << 29, 4096);
  wire::Pressure psi(1.5f, 2.5f, 0.25f, 3.5f, 0.125f);
  wire::Pressure no_psi(-1.0f, -1.0f, -1.0f, -1.0f, -1.0f);
  wire::LoadAverage loadavg(0.5f, 0.75f, 1.0f);
  wire::NetRates eth0(1e6, 2e6, 1000, 2000, 0, 0, 0.5, 0);
  std::vector<flatbuffers::Offset<wire::NetInterface>> net{
      wire::CreateNetInterfaceDirect(fbb, "eth0", &eth0)};
  // A hostile sensor name: the JSON must stay valid.
  std::vector<flatbuffers::Offset<wire::Temperature>> temps{
      wire::CreateTemperatureDirect(fbb, "zone\"0\\x\x01", 48.5f)};
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSampleDirect(fbb, kT0 + 500, "arm64", &cpus, &mem, &psi, &loadavg, &net, &temps),
      // A host without PSI, without memory and with no per-CPU list.
      wire::CreateLoadSampleDirect(fbb, kT0 + 900, "arm64", nullptr, nullptr, &no_psi, &loadavg)};
  std::vector<wire::RttSample> raw{{0, 41, 5'000'000'000, 2'000'000}, {2, 42, 5'010'000'000, -1}};
  const auto agent_id = fbb.CreateString("fra1-edge-07");
  const auto region = fbb.CreateString("eu-central");
  const auto pop = fbb.CreateString("fra1");
  const auto latency_vec = fbb.CreateVector(latency);
  const auto load_vec = fbb.CreateVector(load);
  const auto raw_vec = fbb.CreateVectorOfStructs(raw);
  const auto self = wire::build_agent_self(fbb, round_trip_self());
  wire::BatchBuilder bb(fbb);
  bb.add_agent_id(agent_id);
  bb.add_seq(4242);
  bb.add_interval_start_ns(kT0);
  bb.add_interval_end_ns(kT0 + kSecond);
  bb.add_region(region);
  bb.add_pop(pop);
  bb.add_latency(latency_vec);
  bb.add_load(load_vec);
  bb.add_rtt_samples(raw_vec);
  bb.add_spool_dropped(kSpoolDropped);
  bb.add_self(self);
  return finish_batch(fbb, bb.Finish());
}

}  // namespace

TEST_CASE("round trip: every column of a batch with 3 latency summaries and 2 load samples") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(rich_batch(), "fra1-edge-07", "fra1", kT0 + 2 * kSecond);
    in.incoming[0].arch = "arm64";
    in.incoming[0].software_version = "0.1.0";
    auto r = store.store(in.incoming);
    INFO(r.error());
    REQUIRE(r);
    REQUIRE(r->size() == 1);
    CHECK((*r)[0] == StoreOutcome::kStored);
    CHECK(store.last_commit_ns() > 0);
    CHECK(store.last_store_ns() >= store.last_commit_ns());
  }
  RawDb db(path);

  auto agents = db.rows("SELECT * FROM agents");
  REQUIRE(agents.size() == 1);
  CHECK(agents[0]["agent_id"].s == "fra1-edge-07");
  CHECK(agents[0]["region"].s == "eu-central");
  CHECK(agents[0]["pop"].s == "fra1");
  CHECK(agents[0]["arch"].s == "arm64");
  CHECK(agents[0]["software_version"].s == "0.1.0");
  CHECK(agents[0]["first_seen_ns"].i == kT0 + 2 * kSecond);
  CHECK(agents[0]["last_seen_ns"].i == kT0 + 2 * kSecond);

  auto batches = db.rows("SELECT * FROM batches");
  REQUIRE(batches.size() == 1);
  CHECK(batches[0]["agent_id"].s == "fra1-edge-07");
  CHECK(batches[0]["seq"].i == 4242);
  CHECK(batches[0]["interval_start_ns"].i == kT0);
  CHECK(batches[0]["interval_end_ns"].i == kT0 + kSecond);
  CHECK(batches[0]["received_ns"].i == kT0 + 2 * kSecond);
  CHECK(batches[0]["region"].s == "eu-central");
  CHECK(batches[0]["pop"].s == "fra1");
  CHECK(batches[0]["latency_count"].i == 3);
  CHECK(batches[0]["load_count"].i == 2);
  CHECK(batches[0]["rtt_sample_count"].i == 2);
  CHECK(batches[0]["spool_dropped"].i == static_cast<std::int64_t>(kSpoolDropped));

  auto lat = db.rows("SELECT * FROM latency_summaries ORDER BY idx");
  REQUIRE(lat.size() == 3);
  const char* protocols[] = {"udp_echo", "tcp_connect", "icmp"};
  for (int k = 0; k < 3; ++k) {
    CAPTURE(k);
    Row& r = lat[static_cast<std::size_t>(k)];
    CHECK(r["agent_id"].s == "fra1-edge-07");
    CHECK(r["seq"].i == 4242);
    CHECK(r["idx"].i == k);
    CHECK(r["target"].s == "target-" + std::to_string(k) + ":7801");
    CHECK(r["protocol"].s == protocols[k]);
    for (const CounterField& c : kCounters) CHECK(r[c.column].i == u(k, c.f));
    CHECK(r["min_ns"].i == ns(k, 9));
    CHECK(r["max_ns"].i == ns(k, 10));
    CHECK(r["mean_ns"].d == static_cast<double>(ns(k, 11)) + 0.5);
    CHECK(r["stddev_ns"].d == static_cast<double>(ns(k, 12)) + 0.25);
    CHECK(r["p50_ns"].i == ns(k, 13));
    CHECK(r["p90_ns"].i == ns(k, 14));
    CHECK(r["p99_ns"].i == ns(k, 15));
    CHECK(r["p999_ns"].i == ns(k, 16));
    CHECK(r["jitter_mean_ns"].d == static_cast<double>(ns(k, 17)) + 0.125);
    CHECK(r["jitter_p99_ns"].i == ns(k, 18));
    CHECK(r["timestamp_source"].s == (k == 0 ? "kernel" : "userspace"));
    CHECK(r["interval_start_ns"].i == kT0);
    CHECK(r["interval_end_ns"].i == kT0 + kSecond);
  }
  // Histogram: varints, the index as a zigzag delta (300 -> 600 = 0x258, then +1 -> 2, then
  // +111 -> 222 = 0xde 0x01), each followed by its count.
  const std::string expected_histogram(
      "\xd8\x04\x07"
      "\x02\x5a"
      "\xde\x01\x03",
      8);
  CHECK(lat[0]["histogram_scheme"].i == 1);
  CHECK(lat[0]["histogram"].type == SQLITE_BLOB);
  CHECK(lat[0]["histogram"].s == expected_histogram);
  using Buckets = std::vector<std::pair<std::uint16_t, std::uint32_t>>;
  CHECK(vantage::collector::store::decode_histogram_blob(lat[0]["histogram"].s) == Buckets{{300, 7}, {301, 90}, {412, 3}});
  CHECK(lat[1]["histogram"].s == std::string("\x0a\x01", 2));
  CHECK(vantage::collector::store::decode_histogram_blob(lat[1]["histogram"].s) == Buckets{{5, 1}});
  CHECK(lat[2]["histogram_scheme"].i == 0);
  CHECK(lat[2]["histogram"].type == SQLITE_NULL);

  auto load = db.rows("SELECT * FROM load_samples ORDER BY idx");
  REQUIRE(load.size() == 2);
  Row& l = load[0];
  CHECK(l["seq"].i == 4242);
  CHECK(l["time_ns"].i == kT0 + 500);
  CHECK(l["arch"].s == "arm64");
  // Column by column as sent: every float in rich_batch() is exact as a double.
  const std::pair<const char*, double> reals[] = {
      {"cpu_user", 0.25},        {"cpu_system", 0.125}, {"cpu_iowait", 0.0625}, {"cpu_steal", 0.03125},
      {"cpu_irq", 0.5},          {"cpu_softirq", 0.75}, {"cpu_idle", 0.5},      {"load1", 0.5},
      {"load5", 0.75},           {"load15", 1.0},       {"psi_cpu_some", 1.5},  {"psi_memory_some", 2.5},
      {"psi_memory_full", 0.25}, {"psi_io_some", 3.5},  {"psi_io_full", 0.125}};
  for (const auto& [column, value] : reals) {
    CAPTURE(column);
    CHECK(l[column].d == value);
  }
  CHECK(l["cpu_busy"].d == doctest::Approx(1.0 - 0.5 - 0.0625));
  const std::pair<const char*, std::int64_t> integers[] = {
      {"cpu_count", 2},          {"mem_total", 8LL << 30}, {"mem_available", 5LL << 30},
      {"swap_total", 1LL << 30}, {"swap_free", 1LL << 29}, {"mem_dirty", 4096}};
  for (const auto& [column, value] : integers) {
    CAPTURE(column);
    CHECK(l[column].i == value);
  }
  CHECK(l["cpus_json"].s ==
        R"([{"cpu":0,"user":0.5,"system":0.1,"iowait":0,"steal":0,"irq":0,"softirq":0.02,"idle":0.38,)"
        R"("freq_khz":1800000},{"cpu":1,"user":0,"system":0,"iowait":0,"steal":0,"irq":0,"softirq":0,)"
        R"("idle":1,"freq_khz":600000}])");
  CHECK(l["net_json"].s ==
        R"([{"name":"eth0","rx_bytes_per_s":1e+06,"tx_bytes_per_s":2e+06,"rx_packets_per_s":1000,)"
        R"("tx_packets_per_s":2000,"rx_errors_per_s":0,"tx_errors_per_s":0,"rx_drops_per_s":0.5,)"
        R"("tx_drops_per_s":0}])");
  CHECK(l["temperatures_json"].s == R"([{"sensor":"zone\"0\\x\u0001","celsius":48.5}])");
  // SQLite agrees the JSON is JSON and can reach into it.
  CHECK(db.integer(
            "SELECT MIN(json_valid(cpus_json) AND json_valid(net_json) AND json_valid(temperatures_json)) "
            "FROM load_samples") == 1);
  CHECK(db.text("SELECT json_extract(temperatures_json, '$[0].sensor') FROM load_samples WHERE idx = 0") ==
        "zone\"0\\x\x01");
  Row& bare = load[1];
  for (const char* c : {"cpu_user", "cpu_busy", "mem_total", "mem_available", "psi_cpu_some",
                        "psi_memory_some", "psi_memory_full", "psi_io_some", "psi_io_full"}) {
    CAPTURE(c);
    CHECK(bare[c].type == SQLITE_NULL);
  }
  CHECK(bare["cpu_count"].i == 0);
  CHECK(bare["load1"].d == 0.5);
  CHECK(bare["cpus_json"].s == "[]");
  CHECK(bare["net_json"].s == "[]");

  auto rtt = db.rows("SELECT * FROM rtt_samples ORDER BY idx");
  REQUIRE(rtt.size() == 2);
  CHECK(rtt[0]["target_index"].i == 0);
  CHECK(rtt[0]["probe_seq"].i == 41);
  CHECK(rtt[0]["send_time_ns"].i == 5'000'000'000);
  CHECK(rtt[0]["rtt_ns"].i == 2'000'000);
  CHECK(rtt[1]["target_index"].i == 2);
  CHECK(rtt[1]["rtt_ns"].i == -1);
  CHECK(db.rows("PRAGMA foreign_key_check").empty());

  auto agent_rows = open_store(path).agents();
  REQUIRE(agent_rows);
  REQUIRE(agent_rows->size() == 1);
  CHECK((*agent_rows)[0].max_seq == 4242);
  CHECK((*agent_rows)[0].batch_count == 1);
  CHECK((*agent_rows)[0].spool_dropped == kSpoolDropped);

  auto self = db.rows("SELECT * FROM agent_self");
  REQUIRE(self.size() == 1);
  CHECK(self[0]["agent_id"].s == "fra1-edge-07");
  CHECK(self[0]["seq"].i == 4242);
  CHECK(self[0]["interval_end_ns"].i == kT0 + kSecond);
  CHECK(self[0]["process_start_ns"].i == kT0 - 3600 * kSecond);
  CHECK(self[0]["config_generation"].i == 3);
  CHECK(self[0]["rss_bytes"].i == 5'000'000'000);
  const auto& summary = (*agent_rows)[0];
  REQUIRE(summary.self.has_value());
  // Every field of the list, in the view and read back through agents().
  const wire::AgentSelfValues sent = round_trip_self();
  std::vector<std::int64_t> read_back;
  wire::for_each_agent_self_field(*summary.self, [&](const wire::AgentSelfField&, auto v) {
    read_back.push_back(static_cast<std::int64_t>(v));
  });
  std::size_t k = 0;
  wire::for_each_agent_self_field(sent, [&](const wire::AgentSelfField& f, auto v) {
    CAPTURE(f.name);
    CHECK(self[0][f.name].i == static_cast<std::int64_t>(v));
    CHECK(read_back[k++] == static_cast<std::int64_t>(v));
  });
  CHECK(self[0]["cpu_user_ns"].i == 101);
  CHECK(self[0]["rejected"].i == 110);
  CHECK(self[0]["spool_errors"].i == 111);
  CHECK(summary.self->spool_errors == 111);
  CHECK(summary.self->seq == 4242);
  CHECK(summary.self->config_generation == 3);
  CHECK(summary.self->rss_bytes == 5'000'000'000ull);
  CHECK(summary.self->cpu_user_ns == 101);
  CHECK(summary.self->rejected == 110);
}

TEST_CASE("a self-metric added since a partition was made: read-only reads it as 0, a writer adds the column") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(rich_batch(), "fra1-edge-07");
    REQUIRE(store.store(in.incoming));
  }
  // What an older collector made: the partition without the list's last column.
  const char* last = wire::kAgentSelfFields[wire::kAgentSelfFieldCount - 1].name;
  const std::string partition = [&] {
    RawDb db(path);
    const std::string name = db.text("SELECT name FROM partitions");
    db.exec("DROP VIEW agent_self; ALTER TABLE self_" + name + " DROP COLUMN " + last);
    return name;
  }();
  {
    OpenOptions read_only = test_options();
    read_only.read_only = true;
    auto agents = open_store(path, read_only).agents();
    INFO(agents.error());
    REQUIRE(agents);
    REQUIRE((*agents)[0].self);
    CHECK((*agents)[0].self->cpu_user_ns == 101);
    wire::for_each_agent_self_field(*(*agents)[0].self, [&](const wire::AgentSelfField& f, auto v) {
      if (std::string_view(f.name) == last) CHECK(v == 0);
    });
  }
  SqliteStore store = open_store(path);
  RawDb db(path);
  CHECK(db.integer("SELECT COUNT(*) FROM pragma_table_info('self_" + partition + "') WHERE name = '" + last + "'") ==
        1);
  auto self = db.rows("SELECT * FROM agent_self");
  REQUIRE(self.size() == 1);
  CHECK(self[0][last].type == SQLITE_NULL);
  CHECK(self[0]["cpu_user_ns"].i == 101);
}

TEST_CASE("dedupe: the same (agent, seq) twice in one call and across calls is stored once") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteStore store = open_store(path);
  Batches first;
  first.add(simple_batch("a", 1, {"t1", "t2"}, 1'000'000), "a");
  // Same (agent, seq), different content: the first one wins.
  first.add(simple_batch("a", 1, {"t1"}, 9'000'000), "a");
  // Same seq from another agent is a different batch.
  first.add(simple_batch("b", 1, {"t1"}, 2'000'000), "b");
  auto r = store.store(first.incoming);
  INFO(r.error());
  REQUIRE(r);
  CHECK(*r ==
        std::vector<StoreOutcome>{StoreOutcome::kStored, StoreOutcome::kDuplicate, StoreOutcome::kStored});

  Batches again;
  again.add(simple_batch("a", 1, {"t3"}, 5'000'000), "a");
  again.add(simple_batch("a", 2), "a");
  auto r2 = store.store(again.incoming);
  INFO(r2.error());
  REQUIRE(r2);
  CHECK(*r2 == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});

  CHECK(*store.seqs("a") == one_to(2));
  CHECK(*store.seqs("b") == one_to(1));
  RawDb db(path);
  CHECK(db.integer("SELECT COUNT(*) FROM batches WHERE agent_id = 'a' AND seq = 1") == 1);
  CHECK(db.integer("SELECT COUNT(*) FROM latency_summaries WHERE agent_id = 'a' AND seq = 1") == 2);
  CHECK(db.integer("SELECT COUNT(*) FROM load_samples WHERE agent_id = 'a' AND seq = 1") == 1);
  CHECK(db.integer("SELECT MAX(p50_ns) FROM latency_summaries WHERE agent_id = 'a' AND seq = 1") ==
        1'000'000);
  CHECK(db.integer("SELECT COUNT(*) FROM latency_summaries WHERE target = 't3'") == 0);
}

TEST_CASE("group commit: 100 batches from 3 agents in one call, seqs 1..N per agent") {
  TempDir dir;
  SqliteStore store = open_store(dir.file("store.db"));
  const std::string names[] = {"agent-a", "agent-b", "agent-c"};
  std::uint64_t next[3] = {1, 1, 1};
  Batches in;
  for (int i = 0; i < 100; ++i) {  // interleaved as several connections' batches would be
    const int a = i % 3;
    in.add(simple_batch(names[a], next[a]++, {"t1", "t2"}), names[a]);
  }
  auto r = store.store(in.incoming);
  INFO(r.error());
  REQUIRE(r);
  REQUIRE(r->size() == 100);
  for (StoreOutcome o : *r) CHECK(o == StoreOutcome::kStored);
  MESSAGE("group commit of 100 batches: COMMIT " << store.last_commit_ns() / 1000 << " us, transaction "
                                                 << store.last_store_ns() / 1000 << " us");
  CHECK(*store.seqs("agent-a") == one_to(34));
  CHECK(*store.seqs("agent-b") == one_to(33));
  CHECK(*store.seqs("agent-c") == one_to(33));
  CHECK(store.seqs("nobody")->empty());

  auto agents = store.agents();
  REQUIRE(agents);
  REQUIRE(agents->size() == 3);
  CHECK((*agents)[0].agent_id == "agent-a");
  CHECK((*agents)[0].max_seq == 34);
  CHECK((*agents)[0].batch_count == 34);
  CHECK((*agents)[1].batch_count == 33);
  CHECK((*agents)[0].first_seen_ns < (*agents)[0].last_seen_ns);
}

TEST_CASE("durability: data survives close and reopen, the file is in WAL mode") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    for (std::uint64_t seq = 1; seq <= 10; ++seq) {
      Batches in;
      in.add(simple_batch("a", seq), "a");
      auto r = store.store(in.incoming);
      INFO(r.error());
      REQUIRE(r);
    }
  }
  {
    RawDb db(path);
    CHECK(db.text("PRAGMA journal_mode") == "wal");
    CHECK(db.integer("PRAGMA user_version") == SqliteStore::kSchemaVersion);
  }
  SqliteStore store = open_store(path);
  CHECK(*store.seqs("a") == one_to(10));
  Batches in;
  in.add(simple_batch("a", 10), "a");
  in.add(simple_batch("a", 11), "a");
  auto r = store.store(in.incoming);
  REQUIRE(r);
  CHECK(*r == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});
  CHECK(*store.seqs("a") == one_to(11));
}

// Forks a writer that stores groups of 4 batches from `first_seq` on and reports each seq on a
// pipe only after store() returned (i.e. after COMMIT); SIGKILLs it once `kill_after` seqs were
// reported, wherever it is (often inside a transaction). Returns every seq it reported.
std::vector<std::uint64_t> run_and_kill(const std::string& path, std::uint64_t first_seq,
                                        std::size_t kill_after) {
  std::array<int, 2> fds{};
  REQUIRE(pipe(fds.data()) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: no doctest, no return into the runner.
    close(fds[0]);
    auto opened = SqliteStore::open(path, test_options());
    if (!opened) _exit(2);
    for (std::uint64_t seq = first_seq; seq < first_seq + 1'000'000; seq += 4) {
      std::vector<Bytes> buffers;
      std::vector<IncomingBatch> incoming;
      for (std::uint64_t s = seq; s < seq + 4; ++s) buffers.push_back(simple_batch("crash", s, {"t1", "t2"}));
      for (const Bytes& b : buffers) {
        IncomingBatch in;
        in.batch = verified_batch(b);
        if (in.batch == nullptr) _exit(3);
        in.agent_id = "crash";
        in.received_ns = in.batch->interval_end_ns();
        incoming.push_back(in);
      }
      if (!opened->store(incoming)) _exit(4);
      for (std::uint64_t s = seq; s < seq + 4; ++s) {
        if (write(fds[1], &s, sizeof s) != static_cast<ssize_t>(sizeof s)) _exit(5);
      }
    }
    _exit(0);
  }
  close(fds[1]);
  std::vector<std::uint64_t> reported;
  const auto read_one = [&] {
    std::uint64_t s = 0;
    std::size_t got = 0;
    while (got < sizeof s) {
      const ssize_t n = read(fds[0], reinterpret_cast<char*>(&s) + got, sizeof s - got);
      if (n <= 0) return false;
      got += static_cast<std::size_t>(n);
    }
    reported.push_back(s);
    return true;
  };
  while (reported.size() < kill_after && read_one()) {
  }
  REQUIRE(kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  while (read_one()) {
  }
  close(fds[0]);
  return reported;
}

TEST_CASE("crash: a SIGKILLed writer loses nothing it reported committed") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  std::uint64_t committed = 0;
  // Several rounds: each writer starts on the WAL its killed predecessor left behind.
  for (std::size_t round = 0; round < 3; ++round) {
    CAPTURE(round);
    const std::vector<std::uint64_t> reported = run_and_kill(path, committed + 1, 40 + 12 * round);
    REQUIRE(reported.size() >= 40);
    std::vector<std::uint64_t> expected_reported(reported.size());
    std::iota(expected_reported.begin(), expected_reported.end(), committed + 1);
    CHECK(reported == expected_reported);

    SqliteStore store = open_store(path);
    const std::vector<std::uint64_t> seqs = *store.seqs("crash");
    MESSAGE("round " << round << ": child reported up to seq " << reported.back() << ", database holds "
                     << seqs.size());
    // Every reported seq is there, and whole transactions only: 1..N without a gap.
    CHECK(seqs.size() >= committed + reported.size());
    CHECK(seqs == one_to(seqs.size()));
    CHECK(seqs.size() % 4 == 0);
    committed = seqs.size();
    RawDb db(path);
    CHECK(db.text("PRAGMA integrity_check") == "ok");
    CHECK(db.rows("PRAGMA foreign_key_check").empty());
    CHECK(db.integer("SELECT COUNT(*) FROM latency_summaries") == 2 * static_cast<std::int64_t>(committed));
  }
}

TEST_CASE("errors: a directory, a missing directory and a non-database name the path") {
  TempDir dir;
  auto on_dir = SqliteStore::open(dir.path());
  CHECK_FALSE(on_dir);
  CHECK(on_dir.error().find(dir.path()) != std::string::npos);
  MESSAGE(on_dir.error());

  const std::string missing = dir.file("no-such-dir/store.db");
  auto on_missing = SqliteStore::open(missing);
  CHECK_FALSE(on_missing);
  CHECK(on_missing.error().find(missing) != std::string::npos);
  MESSAGE(on_missing.error());

  const std::string garbage = dir.file("garbage.db");
  std::ofstream(garbage) << std::string(8192, 'x');
  auto on_garbage = SqliteStore::open(garbage);
  CHECK_FALSE(on_garbage);
  CHECK(on_garbage.error().find(garbage) != std::string::npos);
  MESSAGE(on_garbage.error());

  // Permission bits do not stop root, so this part runs only for other users.
  if (geteuid() != 0) {
    const std::string locked = dir.file("locked");
    REQUIRE(mkdir(locked.c_str(), 0500) == 0);
    auto on_locked = SqliteStore::open(locked + "/store.db");
    CHECK_FALSE(on_locked);
    CHECK(on_locked.error().find(locked) != std::string::npos);
  }
}

TEST_CASE("errors: a read-only database refuses to store and nothing is written") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(simple_batch("a", 1), "a");
    REQUIRE(store.store(in.incoming));
  }
  OpenOptions read_only = test_options();
  read_only.read_only = true;
  SqliteStore store = open_store(path, read_only);
  Batches in;
  in.add(simple_batch("a", 2), "a");
  in.add(simple_batch("b", 1), "b");
  auto r = store.store(in.incoming);
  CHECK_FALSE(r);
  CHECK(r.error().find(path) != std::string::npos);
  MESSAGE(r.error());
  CHECK(*store.seqs("a") == one_to(1));
  CHECK(store.seqs("b")->empty());
  // The handle stays usable for reading after the failed write.
  auto agents = store.agents();
  REQUIRE(agents);
  CHECK(agents->size() == 1);

  // A read-only open never creates or migrates a database.
  auto fresh = SqliteStore::open(dir.file("fresh.db"), read_only);
  CHECK_FALSE(fresh);
}

TEST_CASE("errors: a failure in the middle of a group rolls the whole group back") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteStore store = open_store(path);
  {
    Batches in;
    in.add(simple_batch("a", 1), "a", "fra1", kT0 + 100 * kSecond);
    REQUIRE(store.store(in.incoming));
  }
  RawDb db(path);
  // Fails the third batch's load sample (agent a, seq 4, sampled at T0 + 4.5 s), after two
  // batches and its own latency rows went in.
  const std::string load_table = "load_" + db.text("SELECT name FROM partitions");
  db.exec("CREATE TRIGGER injected BEFORE INSERT ON " + load_table + " WHEN NEW.time_ns = " +
          std::to_string(kT0 + 4 * kSecond + kSecond / 2) + " BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
  Batches group;
  group.add(simple_batch("a", 2), "a", "fra1", kT0 + 200 * kSecond);
  group.add(simple_batch("b", 1), "b", "ams1", kT0 + 200 * kSecond);
  group.add(simple_batch("a", 4), "a", "fra1", kT0 + 200 * kSecond);
  group.add(simple_batch("a", 5), "a", "fra1", kT0 + 200 * kSecond);
  auto r = store.store(group.incoming);
  CHECK_FALSE(r);
  CHECK(r.error().find("injected failure") != std::string::npos);
  CHECK(r.error().find(path) != std::string::npos);
  CHECK(*store.seqs("a") == one_to(1));
  CHECK(store.seqs("b")->empty());
  CHECK(db.integer("SELECT COUNT(*) FROM agents") == 1);
  CHECK(db.integer("SELECT last_seen_ns FROM agents") == kT0 + 100 * kSecond);
  CHECK(db.integer("SELECT COUNT(*) FROM latency_summaries") == 1);
  CHECK(db.integer("SELECT COUNT(*) FROM load_samples") == 1);

  // Once the cause is gone the same group goes in whole (the caller's RetryLater path).
  db.exec("DROP TRIGGER injected");
  auto retry = store.store(group.incoming);
  INFO(retry.error());
  REQUIRE(retry);
  CHECK(*store.seqs("a") == std::vector<std::uint64_t>{1, 2, 4, 5});
  CHECK(*store.seqs("b") == one_to(1));
}

TEST_CASE("queries: latest latency per (agent, target) and latest load per PoP") {
  TempDir dir;
  SqliteStore store = open_store(dir.file("store.db"));
  Batches in;
  // Stored out of order: "latest" is by interval, not by insertion.
  in.add(simple_batch("fra-1", 3, {"t1", "t2"}, 3'000'000, "fra1", 0.75), "fra-1", "fra1");
  in.add(simple_batch("fra-1", 1, {"t1", "t2"}, 1'000'000, "fra1", 0.25), "fra-1", "fra1");
  in.add(simple_batch("fra-1", 2, {"t1"}, 2'000'000, "fra1", 0.5), "fra-1", "fra1");
  in.add(simple_batch("fra-1", 4, {"t3"}, 4'000'000, "fra1", 0.875), "fra-1", "fra1");
  in.add(simple_batch("fra-2", 2, {"t1"}, 7'000'000, "fra1", 0.5), "fra-2", "fra1");
  in.add(simple_batch("ams-1", 9, {"t1"}, 9'000'000, "ams1", 0.625), "ams-1", "ams1");
  in.add(simple_batch("ams-1", 8, {"t1"}, 8'000'000, "ams1", 0.125), "ams-1", "ams1");
  auto r = store.store(in.incoming);
  INFO(r.error());
  REQUIRE(r);

  auto latest = store.latest_latency();
  INFO(latest.error());
  REQUIRE(latest);
  const auto& rows = *latest;
  REQUIRE(rows.size() == 5);  // ams-1/t1, fra-1/t1, fra-1/t2, fra-1/t3, fra-2/t1 (by pop, agent, target)
  CHECK(rows[0].pop == "ams1");
  CHECK(rows[0].agent_id == "ams-1");
  CHECK(rows[0].seq == 9);
  CHECK(rows[0].p50_ns == 9'000'000);
  CHECK(rows[0].p99_ns == 9'000'007);
  CHECK(rows[1].agent_id == "fra-1");
  CHECK(rows[1].target == "t1");
  CHECK(rows[1].seq == 3);
  CHECK(rows[1].p50_ns == 3'000'000);
  CHECK(rows[1].protocol == "udp_echo");
  CHECK(rows[1].region == "eu-central");
  CHECK(rows[1].sent == 10);
  CHECK(rows[1].lost == 1);
  CHECK(rows[1].loss_ratio == doctest::Approx(0.1));
  CHECK(rows[1].jitter_mean_ns == 300.0);
  CHECK(rows[1].jitter_p99_ns == 900);
  CHECK(rows[1].interval_end_ns == kT0 + 4 * kSecond);
  CHECK(rows[2].target == "t2");
  CHECK(rows[2].seq == 3);
  CHECK(rows[3].target == "t3");
  CHECK(rows[3].seq == 4);
  CHECK(rows[4].agent_id == "fra-2");
  CHECK(rows[4].seq == 2);

  auto load = store.latest_load_per_pop();
  INFO(load.error());
  REQUIRE(load);
  REQUIRE(load->size() == 2);
  const auto& ams = (*load)[0];
  CHECK(ams.pop == "ams1");
  CHECK(ams.agent_id == "ams-1");
  CHECK(ams.time_ns == kT0 + 9 * kSecond + kSecond / 2);
  REQUIRE(ams.cpu_busy.has_value());
  CHECK(*ams.cpu_busy == doctest::Approx(1.0 - 0.625));
  const auto& fra = (*load)[1];
  CHECK(fra.pop == "fra1");
  CHECK(fra.agent_id == "fra-1");  // seq 4 sampled at T0+4.5 s, after fra-2's T0+2.5 s
  CHECK(fra.time_ns == kT0 + 4 * kSecond + kSecond / 2);
  CHECK(*fra.cpu_busy == doctest::Approx(1.0 - 0.875));
  CHECK(*fra.mem_total == (8LL << 30));
  CHECK(*fra.mem_available == (4LL << 30));
  CHECK_FALSE(fra.psi_cpu_some.has_value());
}

namespace {

// A batch for interval (end - 10 s, end]: one summary per target with the given p50 and sent.
Bytes batch_at(const std::string& agent, std::uint64_t seq, std::int64_t end,
               const std::vector<std::string>& targets, std::int64_t p50, std::uint32_t sent = 10,
               const std::string& pop = "fra1") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (const auto& t : targets) {
    latency.push_back(wire::CreateLatencySummaryDirect(fbb, t.c_str(), wire::Protocol::UdpEcho, sent,
                                                       sent == 0 ? 0 : sent - 1, sent == 0 ? 0 : 1, 0, 0, 0, 0,
                                                       1, p50 / 2, p50 * 2, static_cast<double>(p50), 1000.0,
                                                       p50, p50, p50 + 7, p50 + 9, 300.0, 900));
  }
  std::vector<wire::CpuUsage> cpus{{-1, 0.25f, 0.125f, 0.0f, 0.0f, 0.0f, 0.0f, 0.5f, 0}};
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSampleDirect(fbb, end - kSecond, "amd64", &cpus)};
  return finish_batch(fbb, wire::CreateBatchDirect(fbb, agent.c_str(), seq, end - 10 * kSecond, end,
                                                   "eu-central", pop.c_str(), &latency, &load));
}

std::int64_t day_start(std::int64_t day) { return day * kPartitionNs; }

}  // namespace

TEST_CASE("partitions: a batch lands in the UTC day of its interval end and a resend is a duplicate in any group") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteStore store = open_store(path);
  const std::int64_t d1 = day_start(kDay0 + 1);
  Batches in;
  in.add(batch_at("a", 1, d1 - kSecond, {"t1"}, 1'000'000), "a");  // the last second of day 0
  in.add(batch_at("a", 2, d1, {"t1"}, 2'000'000), "a");             // midnight belongs to day 1
  in.add(batch_at("a", 3, d1 + 10 * kSecond, {"t1"}, 3'000'000), "a");
  REQUIRE(store.store(in.incoming));
  CHECK(*store.partition_days() == std::vector<std::int64_t>{kDay0, kDay0 + 1});
  RawDb db(path);
  CHECK(db.text("SELECT group_concat(name) FROM partitions") == "d20260921,d20260922");
  CHECK(db.integer("SELECT count(*) FROM batches_d20260921") == 1);
  CHECK(db.integer("SELECT count(*) FROM batches_d20260922") == 2);
  CHECK(db.integer("SELECT count(*) FROM latency_d20260922") == 2);

  // Resent (different content, same key) alone, and together with a new batch: duplicates.
  Batches again;
  again.add(batch_at("a", 1, d1 - kSecond, {"t1", "t2"}, 9'000'000), "a");
  again.add(batch_at("a", 3, d1 + 10 * kSecond, {"t1"}, 9'000'000), "a");
  again.add(batch_at("a", 4, d1 + 20 * kSecond, {"t1"}, 4'000'000), "a");
  auto r = store.store(again.incoming);
  REQUIRE(r);
  CHECK(*r ==
        std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kDuplicate, StoreOutcome::kStored});
  CHECK(*store.seqs("a") == one_to(4));
  CHECK(db.integer("SELECT count(*) FROM latency_summaries WHERE agent_id = 'a' AND p50_ns = 9000000") == 0);
  CHECK(db.integer("SELECT count(*) FROM latency_summaries") == 4);
  auto agents = store.agents();
  REQUIRE(agents);
  CHECK((*agents)[0].batch_count == 4);
  CHECK((*agents)[0].max_seq == 4);
}

TEST_CASE("latest latency across partitions: older pairs, out-of-order arrival and empty intervals") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  const std::int64_t d1 = day_start(kDay0 + 1);
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(batch_at("a", 1, d1 - 60 * kSecond, {"t1", "t2"}, 1'000'000), "a");
    in.add(batch_at("a", 3, d1 + 60 * kSecond, {"t1"}, 3'000'000), "a");
    in.add(batch_at("a", 2, d1 + 30 * kSecond, {"t1", "t3"}, 2'000'000), "a");  // late arrival
    REQUIRE(store.store(in.incoming));
    auto rows = *store.latest_latency();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].target == "t1");
    CHECK(rows[0].seq == 3);
    CHECK(rows[1].target == "t2");
    CHECK(rows[1].seq == 1);  // only in the older day
    CHECK(rows[1].interval_end_ns == d1 - 60 * kSecond);
    CHECK(rows[2].target == "t3");
    CHECK(rows[2].seq == 2);
    CHECK(rows[2].p50_ns == 2'000'000);
  }
  // After a reopen (the in-memory state read back): an interval without probes (sent 0) does not
  // replace the last one that measured the path; one that measured it does.
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(batch_at("a", 4, d1 + 90 * kSecond, {"t1", "t2"}, 4'000'000, 0), "a");
    REQUIRE(store.store(in.incoming));
    auto rows = *store.latest_latency();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].seq == 3);  // t1: seq 4 sent nothing
    CHECK(rows[1].seq == 1);  // t2 likewise
    CHECK(rows[2].seq == 2);
  }
  {
    SqliteStore store = open_store(path);
    auto rows = *store.latest_latency();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].seq == 3);
    Batches in;
    in.add(batch_at("a", 5, d1 + 100 * kSecond, {"t2"}, 5'000'000), "a");
    REQUIRE(store.store(in.incoming));
    rows = *store.latest_latency();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].seq == 3);
    CHECK(rows[1].seq == 5);
    CHECK(rows[1].p50_ns == 5'000'000);
  }
  // A pair that was only ever idle still shows its newest interval.
  SqliteStore store = open_store(path);
  Batches in;
  in.add(batch_at("b", 1, d1, {"t9"}, 0, 0, "ams1"), "b", "ams1");
  REQUIRE(store.store(in.incoming));
  auto rows = *store.latest_latency();
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].agent_id == "b");
  CHECK(rows[0].sent == 0);
}

TEST_CASE("dictionaries: ids survive reopen, no duplicate agents or targets, latest stays right") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  for (std::uint64_t round = 0; round < 3; ++round) {
    SqliteStore store = open_store(path);
    Batches in;
    for (std::uint64_t k = 1; k <= 4; ++k) {
      const std::uint64_t seq = round * 4 + k;
      in.add(batch_at("a", seq, kT0 + static_cast<std::int64_t>(seq) * 10 * kSecond, {"t1", "t2"},
                      static_cast<std::int64_t>(seq) * 1000),
             "a");
      in.add(batch_at("b", seq, kT0 + static_cast<std::int64_t>(seq) * 10 * kSecond, {"t2", "t3"},
                      static_cast<std::int64_t>(seq) * 1000, 10, "ams1"),
             "b", "ams1");
    }
    auto r = store.store(in.incoming);
    INFO(r.error());
    REQUIRE(r);
  }
  RawDb db(path);
  CHECK(db.integer("SELECT count(*) FROM agents") == 2);
  CHECK(db.integer("SELECT count(*) FROM targets") == 3);
  CHECK(db.integer("SELECT count(*) FROM pairs") == 4);
  // The steady state: every pair's latest row is in its agent's newest batch, nothing written.
  CHECK(db.integer("SELECT count(*) FROM pairs WHERE best_day IS NOT NULL") == 0);
  SqliteStore store = open_store(path);
  auto rows = *store.latest_latency();
  REQUIRE(rows.size() == 4);
  for (const auto& row : rows) {
    CHECK(row.seq == 12);
    CHECK(row.p50_ns == 12'000);
  }
  CHECK(*store.seqs("a") == one_to(12));
  auto agents = *store.agents();
  REQUIRE(agents.size() == 2);
  CHECK(agents[0].batch_count == 12);
  CHECK(agents[1].pop == "ams1");
}

TEST_CASE("pair history: one pair's intervals in a range, by agent or by PoP, across partitions") {
  TempDir dir;
  SqliteStore store = open_store(dir.file("store.db"));
  const std::int64_t d1 = day_start(kDay0 + 1);
  Batches in;
  // a (fra1) and b (fra1) and c (ams1) every 10 s from 60 s before midnight to 60 s after.
  std::uint64_t seq = 0;
  for (std::int64_t end = d1 - 60 * kSecond; end <= d1 + 60 * kSecond; end += 10 * kSecond) {
    ++seq;
    const std::int64_t p50 = (end - d1) / kSecond + 1000;
    in.add(batch_at("a", seq, end, {"t1", "t2"}, p50), "a");
    in.add(batch_at("b", seq, end, {"t2", "t1"}, p50 + 1), "b");
    in.add(batch_at("c", seq, end, {"t1"}, p50 + 2, 10, "ams1"), "c", "ams1");
  }
  REQUIRE(store.store(in.incoming));

  PairHistoryQuery q;
  q.agent_id = "a";
  q.target = "t1";
  q.from_ns = d1 - 30 * kSecond;
  q.to_ns = d1 + 30 * kSecond;  // exclusive
  auto h = store.pair_history(q);
  INFO(h.error());
  REQUIRE(h);
  const auto& points = *h;
  REQUIRE(points.size() == 6);
  for (std::size_t i = 0; i < points.size(); ++i) {
    const std::int64_t end = d1 - 30 * kSecond + static_cast<std::int64_t>(i) * 10 * kSecond;
    CAPTURE(i);
    CHECK(points[i].agent_id == "a");
    CHECK(points[i].interval_end_ns == end);
    CHECK(points[i].interval_start_ns == end - 10 * kSecond);
    CHECK(points[i].p50_ns == (end - d1) / kSecond + 1000);
    CHECK(points[i].p99_ns == (end - d1) / kSecond + 1000 + 7);
    CHECK(points[i].protocol == "udp_echo");
    CHECK(points[i].sent == 10);
    CHECK(points[i].loss_ratio == doctest::Approx(0.1));
  }
  CHECK(points[0].seq == 4);

  q.agent_id = {};
  q.pop = "fra1";
  auto by_pop = *store.pair_history(q);
  REQUIRE(by_pop.size() == 12);
  CHECK(by_pop[0].agent_id == "a");
  CHECK(by_pop[1].agent_id == "b");
  CHECK(by_pop[1].p50_ns == by_pop[0].p50_ns + 1);

  q.pop = "ams1";
  CHECK(store.pair_history(q)->size() == 6);
  q.protocol = "icmp";
  CHECK(store.pair_history(q)->empty());
  q.protocol = {};
  q.target = "t2";
  CHECK(store.pair_history(q)->empty());
  q.pop = {};
  q.agent_id = "nobody";
  CHECK(store.pair_history(q)->empty());
}

TEST_CASE("retention: whole days drop, ingest goes on, batches already expired are acked and not stored") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  OpenOptions options = test_options();
  options.retention_days = 2;
  fake_now = day_start(kDay0) + 3600 * kSecond;
  SqliteStore store = open_store(path, options);
  {
    Batches in;
    in.add(batch_at("a", 1, day_start(kDay0) + 60 * kSecond, {"t1", "t2"}, 1000), "a");
    in.add(batch_at("a", 2, day_start(kDay0 + 1) + 60 * kSecond, {"t1"}, 2000), "a");
    in.add(batch_at("b", 1, day_start(kDay0) + 60 * kSecond, {"t1"}, 3000, 10, "ams1"), "b", "ams1");
    REQUIRE(store.store(in.incoming));
  }
  CHECK(store.drop_expired(day_start(kDay0 + 3) - 1) == 0);  // day 0 is not yet wholly 2 days old
  CHECK(store.drop_expired(day_start(kDay0 + 3)) == 1);
  CHECK(*store.partition_days() == std::vector<std::int64_t>{kDay0 + 1});
  CHECK(*store.seqs("a") == std::vector<std::uint64_t>{2});
  CHECK(store.seqs("b")->empty());
  {
    auto rows = *store.latest_latency();
    REQUIRE(rows.size() == 1);  // a/t1 from day 1; a/t2 and b/t1 went with day 0
    CHECK(rows[0].agent_id == "a");
    CHECK(rows[0].seq == 2);
    auto agents = *store.agents();
    REQUIRE(agents.size() == 2);
    CHECK(agents[0].batch_count == 1);
    CHECK(agents[1].batch_count == 0);
    CHECK(store.latest_load_per_pop()->size() == 1);
  }
  // Ingest goes on: into the kept day, a new day, and a batch for the dropped day (expired on
  // arrival: acked as stored, not written, the day not recreated).
  fake_now = day_start(kDay0 + 3);
  {
    Batches in;
    in.add(batch_at("a", 3, day_start(kDay0 + 1) + 120 * kSecond, {"t1", "t2"}, 4000), "a");
    in.add(batch_at("b", 2, day_start(kDay0 + 2) + 60 * kSecond, {"t1"}, 5000, 10, "ams1"), "b", "ams1");
    in.add(batch_at("b", 0, day_start(kDay0) + 30 * kSecond, {"t1"}, 6000, 10, "ams1"), "b", "ams1");
    auto r = store.store(in.incoming);
    INFO(r.error());
    REQUIRE(r);
    CHECK(*r == std::vector<StoreOutcome>(3, StoreOutcome::kStored));
  }
  CHECK(store.expired_on_arrival() == 1);
  CHECK(*store.partition_days() == std::vector<std::int64_t>{kDay0 + 1, kDay0 + 2});
  CHECK(*store.seqs("a") == std::vector<std::uint64_t>{2, 3});
  CHECK(*store.seqs("b") == std::vector<std::uint64_t>{2});
  CHECK(store.latest_latency()->size() == 3);

  // store() drops on its own once the clock moves (at most once a minute).
  fake_now = day_start(kDay0 + 4) + 61 * kSecond;
  {
    Batches in;
    in.add(batch_at("b", 3, day_start(kDay0 + 4), {"t1"}, 7000, 10, "ams1"), "b", "ams1");
    REQUIRE(store.store(in.incoming));
  }
  CHECK(*store.partition_days() == std::vector<std::int64_t>{kDay0 + 2, kDay0 + 4});
  CHECK(store.seqs("a")->empty());
  CHECK(*store.seqs("b") == std::vector<std::uint64_t>{2, 3});
  RawDb db(path);
  CHECK(db.integer("SELECT count(*) FROM batches") == 2);  // the views follow
  CHECK(db.integer("SELECT count(*) FROM sqlite_master WHERE name LIKE '%_d20260921'") == 0);
  fake_now = kT0 + 3600 * kSecond;
}

namespace {

// A version-2 database as that collector wrote it: two agents, three batches over two days, with
// summaries (one with a histogram), load samples, a raw sample and self-metrics.
void write_v2_database(const std::string& path, bool version1) {
  std::ofstream{path};  // an empty file is an empty database
  RawDb db(path);
  db.exec(std::string("BEGIN;") + kOldSchemaV1 + (version1 ? "" : kOldSchemaV2) + "PRAGMA user_version=" +
          (version1 ? "1" : "2") + ";COMMIT;");
  const std::string t0 = std::to_string(kT0);
  const std::string d1 = std::to_string(day_start(kDay0 + 1) + 5 * kSecond);
  db.exec("INSERT INTO agents VALUES ('fra-1', 'eu-central', 'fra1', 'amd64', '0.1.0', " + t0 + ", " + d1 + ");"
          "INSERT INTO agents VALUES ('ams-1', 'eu-central', 'ams1', 'arm64', '0.1.0', " + t0 + ", " + t0 + ");");
  const auto batch = [&](const char* agent, int seq, const std::string& end, const char* pop) {
    db.exec(std::string("INSERT INTO batches VALUES ('") + agent + "', " + std::to_string(seq) + ", " + end +
            " - 1000000000, " + end + ", " + end + " + 5, 'eu-central', '" + pop + "', 2, 1, 1, " +
            std::to_string(seq * 10) + ")");
  };
  batch("fra-1", 1, t0, "fra1");
  batch("fra-1", 2, d1, "fra1");
  batch("ams-1", 7, t0, "ams1");
  const auto summary = [&](const char* agent, int seq, int idx, const char* target, int p50, const std::string& end,
                           const char* histogram) {
    db.exec(std::string("INSERT INTO latency_summaries VALUES ('") + agent + "', " + std::to_string(seq) + ", " +
            std::to_string(idx) + ", '" + target + "', 'udp_echo', 10, 9, 1, 0, 0, 0, 0, 1, 5, 50, 20.5, 2.5, " +
            std::to_string(p50) + ", 30, " + std::to_string(p50 + 7) + ", 45, 3.5, 9, 'kernel', 1, " + histogram +
            ", 1, 2, 3, 4, 5, 6, 7, 8, " + end + " - 1000000000, " + end + ")");
  };
  summary("fra-1", 1, 0, "t1", 100, t0, "X'2c01070000002d015a000000'");
  summary("fra-1", 1, 1, "t2", 200, t0, "NULL");
  summary("fra-1", 2, 0, "t1", 300, d1, "NULL");
  summary("fra-1", 2, 1, "t3", 400, d1, "NULL");
  summary("ams-1", 7, 0, "t1", 500, t0, "NULL");
  summary("ams-1", 7, 1, "t2", 600, t0, "NULL");
  for (const auto& [agent, seq, time] : {std::tuple{"fra-1", 1, t0}, std::tuple{"fra-1", 2, d1},
                                         std::tuple{"ams-1", 7, t0}}) {
    db.exec(std::string("INSERT INTO load_samples VALUES ('") + agent + "', " + std::to_string(seq) + ", 0, " +
            time + ", 'amd64', 0.25, 0.125, 0, 0, 0, 0, 0.5, 0.5, 4, 8589934592, 4294967296, 0, 0, 0, 0.5, 0.75, "
            "1.0, NULL, NULL, NULL, NULL, NULL, '[]', '[]', '[]')");
    db.exec(std::string("INSERT INTO rtt_samples VALUES ('") + agent + "', " + std::to_string(seq) +
            ", 0, 1, 41, 5000, 2000)");
  }
  if (!version1) {
    db.exec("INSERT INTO agent_self VALUES ('fra-1', 2, " + d1 + ", 11, 3, 5000000000, 101, 102, 103, 104, 105, "
            "106, 107, 108, 109, 110)");
  }
}

}  // namespace

TEST_CASE("migration: a version-2 database is copied into day partitions and reads as before") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  write_v2_database(path, false);
  {
    OpenOptions read_only = test_options();
    read_only.read_only = true;
    auto refused = SqliteStore::open(path, read_only);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().find(path) != std::string::npos);
    CHECK(refused.error().find("schema version 2") != std::string::npos);
  }
  SqliteStore store = open_store(path);
  CHECK(*store.partition_days() == std::vector<std::int64_t>{kDay0, kDay0 + 1});
  CHECK(*store.seqs("fra-1") == std::vector<std::uint64_t>{1, 2});
  CHECK(*store.seqs("ams-1") == std::vector<std::uint64_t>{7});
  auto latest = *store.latest_latency();
  REQUIRE(latest.size() == 5);  // ams-1/t1, ams-1/t2, fra-1/t1, fra-1/t2, fra-1/t3
  CHECK(latest[0].agent_id == "ams-1");
  CHECK(latest[0].p50_ns == 500);
  CHECK(latest[2].target == "t1");
  CHECK(latest[2].seq == 2);
  CHECK(latest[2].p50_ns == 300);
  CHECK(latest[2].p99_ns == 307);
  CHECK(latest[3].target == "t2");
  CHECK(latest[3].seq == 1);
  CHECK(latest[4].target == "t3");
  auto agents = *store.agents();
  REQUIRE(agents.size() == 2);
  CHECK(agents[1].agent_id == "fra-1");
  CHECK(agents[1].batch_count == 2);
  CHECK(agents[1].max_seq == 2);
  CHECK(agents[1].spool_dropped == 20);
  REQUIRE(agents[1].self.has_value());
  CHECK(agents[1].self->seq == 2);
  CHECK(agents[1].self->rss_bytes == 5'000'000'000ull);
  CHECK(agents[1].self->rejected == 110);
  CHECK_FALSE(agents[0].self.has_value());
  CHECK(store.latest_load_per_pop()->size() == 2);
  {
    RawDb db(path);
    CHECK(db.integer("PRAGMA user_version") == SqliteStore::kSchemaVersion);
    CHECK(db.integer("SELECT count(*) FROM sqlite_master WHERE name LIKE 'v2_%'") == 0);
    auto row = db.rows("SELECT * FROM latency_summaries WHERE agent_id = 'fra-1' AND seq = 1 AND idx = 0");
    REQUIRE(row.size() == 1);
    CHECK(row[0]["target"].s == "t1");
    CHECK(row[0]["timestamp_source"].s == "kernel");
    // The v2 BLOB (6 bytes a bucket) is re-encoded in the v3 varint layout.
    CHECK(row[0]["histogram"].s == std::string("\xd8\x04\x07\x02\x5a", 5));
    CHECK(row[0]["histogram_dropped"].i == 8);
    CHECK(row[0]["mean_ns"].d == 20.5);
    CHECK(db.integer("SELECT count(*) FROM load_samples") == 3);
    CHECK(db.integer("SELECT count(*) FROM rtt_samples WHERE probe_seq = 41") == 3);
    CHECK(db.integer("SELECT count(*) FROM agent_self") == 1);
    CHECK(db.text("PRAGMA integrity_check") == "ok");
  }
  // Ingest continues on the migrated file; a resent old batch is still a duplicate.
  Batches in;
  in.add(batch_at("fra-1", 2, day_start(kDay0 + 1) + 5 * kSecond, {"t1"}, 1), "fra-1");
  in.add(simple_batch("fra-1", 3, {"t1"}, 9'000'000), "fra-1");
  auto r = store.store(in.incoming);
  INFO(r.error());
  REQUIRE(r);
  CHECK(*r == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});
  CHECK(*store.seqs("fra-1") == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("migration: a version-1 database (no self-metrics) is migrated too") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  write_v2_database(path, true);
  SqliteStore store = open_store(path);
  CHECK(*store.seqs("fra-1") == std::vector<std::uint64_t>{1, 2});
  auto agents = *store.agents();
  REQUIRE(agents.size() == 2);
  CHECK_FALSE(agents[1].self.has_value());
  RawDb db(path);
  CHECK(db.integer("PRAGMA user_version") == SqliteStore::kSchemaVersion);
  CHECK(db.integer("SELECT count(*) FROM agent_self") == 0);
}

namespace {

constexpr Incarnation kIncarnationA{0xa1, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                                    0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10};
constexpr Incarnation kIncarnationB{0xb2, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};

// Adds simple_batch(agent, seq) under `incarnation`, as a connection whose Hello carried it.
void add_under(Batches& in, const Incarnation& incarnation, const char* agent, std::uint64_t seq,
               std::int64_t p50 = 1'000'000) {
  in.add(simple_batch(agent, seq, {"t1"}, p50), agent);
  in.incoming.back().incarnation = incarnation;
}

std::vector<StoreOutcome> outcomes(SqliteStore& store, const Batches& in) {
  auto r = store.store(in.incoming);
  INFO(r.error());
  REQUIRE(r);
  return *r;
}

// The schema version 3 layout exactly as that collector created it: the dictionaries and one day
// partition (its batch key was (agent, seq)); views and the self-metrics columns are rebuilt and
// added by the migration.
constexpr const char* kSchemaV3Dictionaries = R"sql(
CREATE TABLE agents(
  id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL, pop TEXT NOT NULL,
  arch TEXT NOT NULL DEFAULT '', software_version TEXT NOT NULL DEFAULT '', first_seen_ns INTEGER NOT NULL,
  last_seen_ns INTEGER NOT NULL, batch_count INTEGER NOT NULL DEFAULT 0, max_seq INTEGER,
  spool_dropped INTEGER NOT NULL DEFAULT 0, latest_day INTEGER, latest_batch INTEGER,
  latest_interval_end_ns INTEGER, latest_seq INTEGER, load_day INTEGER, load_row INTEGER, load_time_ns INTEGER,
  load_seq INTEGER, self_day INTEGER, self_batch INTEGER, self_seq INTEGER
);
CREATE TABLE targets(id INTEGER PRIMARY KEY, name TEXT NOT NULL, protocol TEXT NOT NULL, UNIQUE (name, protocol));
CREATE TABLE pairs(
  agent INTEGER NOT NULL, target INTEGER NOT NULL, best_day INTEGER, best_batch INTEGER, best_idx INTEGER,
  best_interval_end_ns INTEGER, best_seq INTEGER, best_sent INTEGER, PRIMARY KEY (agent, target)
) WITHOUT ROWID;
CREATE TABLE partitions(day INTEGER PRIMARY KEY, name TEXT NOT NULL, created_ns INTEGER NOT NULL);
CREATE TABLE batches_d20260921(
  id INTEGER PRIMARY KEY, agent INTEGER NOT NULL, seq INTEGER NOT NULL, interval_start_ns INTEGER NOT NULL,
  interval_end_ns INTEGER NOT NULL, received_ns INTEGER NOT NULL, region TEXT NOT NULL, pop TEXT NOT NULL,
  latency_count INTEGER NOT NULL, load_count INTEGER NOT NULL, rtt_sample_count INTEGER NOT NULL,
  spool_dropped INTEGER NOT NULL
);
CREATE UNIQUE INDEX batches_d20260921_key ON batches_d20260921(agent, seq);
CREATE TABLE latency_d20260921(
  id INTEGER PRIMARY KEY, target INTEGER, sent INTEGER, received INTEGER, lost INTEGER, late INTEGER,
  reordered INTEGER, duplicates INTEGER, lost_outbound INTEGER, lost_inbound INTEGER, min_ns INTEGER,
  max_ns INTEGER, mean_ns REAL, stddev_ns REAL, p50_ns INTEGER, p90_ns INTEGER, p99_ns INTEGER,
  p999_ns INTEGER, jitter_mean_ns REAL, jitter_p99_ns INTEGER, timestamp_source INTEGER,
  histogram_scheme INTEGER, histogram BLOB, send_errors INTEGER, unexpected INTEGER, invalid INTEGER,
  reflector_restarts INTEGER, session_resets INTEGER, ipdv_count INTEGER, histogram_overflow INTEGER,
  histogram_dropped INTEGER
);
CREATE TABLE load_d20260921(
  id INTEGER PRIMARY KEY, time_ns INTEGER, arch TEXT, cpu_user REAL, cpu_system REAL, cpu_iowait REAL,
  cpu_steal REAL, cpu_irq REAL, cpu_softirq REAL, cpu_idle REAL, cpu_busy REAL, cpu_count INTEGER,
  mem_total INTEGER, mem_available INTEGER, mem_dirty INTEGER, swap_total INTEGER, swap_free INTEGER,
  load1 REAL, load5 REAL, load15 REAL, psi_cpu_some REAL, psi_memory_some REAL, psi_memory_full REAL,
  psi_io_some REAL, psi_io_full REAL, cpus_json TEXT, net_json TEXT, temperatures_json TEXT
);
CREATE TABLE rtt_d20260921(
  id INTEGER PRIMARY KEY, target_index INTEGER, probe_seq INTEGER, send_time_ns INTEGER, rtt_ns INTEGER
);
CREATE TABLE self_d20260921(batch INTEGER PRIMARY KEY);
)sql";

// Agent "fra-1" with seqs 1 and 2 on kDay0, each with one summary of target t1 (p50 = 100 * seq).
void write_v3_database(const std::string& path) {
  std::ofstream{path};
  RawDb db(path);  // kDay0 is 2026-09-21
  const std::string t0 = std::to_string(kT0);
  db.exec(std::string("BEGIN;") + kSchemaV3Dictionaries + "PRAGMA user_version=3;" +
          "INSERT INTO partitions VALUES (" + std::to_string(kDay0) + ", 'd20260921', " + t0 + ");" +
          "INSERT INTO targets VALUES (1, 't1', 'udp_echo');" +
          "INSERT INTO agents(id, agent_id, region, pop, arch, software_version, first_seen_ns, last_seen_ns, "
          "batch_count, max_seq, spool_dropped, latest_day, latest_batch, latest_interval_end_ns, latest_seq) "
          "VALUES (1, 'fra-1', 'eu-central', 'fra1', 'amd64', '0.1.0', " + t0 + ", " + t0 + ", 2, 2, 0, " +
          std::to_string(kDay0) + ", 2, " + t0 + " + 2, 2);" +
          "INSERT INTO pairs VALUES (1, 1, NULL, NULL, NULL, NULL, NULL, NULL);");
  for (int seq = 1; seq <= 2; ++seq) {
    const std::string s = std::to_string(seq);
    db.exec("INSERT INTO batches_d20260921 VALUES (" + s + ", 1, " + s + ", " + t0 + ", " + t0 + " + " + s + ", " +
            t0 + ", 'eu-central', 'fra1', 1, 0, 0, 0);"
            "INSERT INTO latency_d20260921(id, target, sent, received, lost, p50_ns, p99_ns) VALUES ((" + s +
            " << 24), 1, 10, 10, 0, " + std::to_string(100 * seq) + ", 1000);");
  }
  db.exec("COMMIT;");
}

}  // namespace

TEST_CASE("incarnations: the same seq under two incarnations is stored twice, the same key once") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches first;
    for (std::uint64_t seq = 1; seq <= 3; ++seq) add_under(first, kIncarnationA, "a", seq);
    CHECK(outcomes(store, first) == std::vector<StoreOutcome>(3, StoreOutcome::kStored));

    // The agent was reinstalled: a new spool, seq from 1 again. New batches, not duplicates.
    Batches second;
    add_under(second, kIncarnationB, "a", 1, 7'000'000);
    add_under(second, kIncarnationB, "a", 2, 7'000'000);
    add_under(second, kIncarnationB, "a", 2, 9'000'000);  // a resend in the same group
    add_under(second, kIncarnationA, "a", 3, 9'000'000);  // a late resend from the old spool
    add_under(second, kLegacyIncarnation, "a", 1);        // an agent without incarnations: its own key
    CHECK(outcomes(store, second) == std::vector<StoreOutcome>{StoreOutcome::kStored, StoreOutcome::kStored,
                                                               StoreOutcome::kDuplicate, StoreOutcome::kDuplicate,
                                                               StoreOutcome::kStored});
    CHECK(*store.seqs("a") == std::vector<std::uint64_t>{1, 1, 1, 2, 2, 3});
    // By incarnation in order of first arrival, the legacy one always first (an agent that gained
    // incarnations never goes back to none), then by seq.
    const std::vector<BatchKey> keys{{kLegacyIncarnation, 1}, {kIncarnationA, 1}, {kIncarnationA, 2},
                                     {kIncarnationA, 3},      {kIncarnationB, 1}, {kIncarnationB, 2}};
    CHECK(*store.batch_keys("a") == keys);
    auto agents = *store.agents();
    REQUIRE(agents.size() == 1);
    CHECK(agents[0].batch_count == 6);
    // max_seq is of the newest incarnation, B, not the 3 of the one before it.
    CHECK(agents[0].incarnation == incarnation_hex(kIncarnationB));
    CHECK(agents[0].max_seq == 2);
  }
  // After a reopen the dictionary is read back: the keys still dedupe, a third incarnation stores.
  SqliteStore store = open_store(path);
  Batches third;
  add_under(third, kIncarnationB, "a", 2);
  add_under(third, kIncarnationB, "b", 2);  // the same incarnation bytes under another agent
  CHECK(outcomes(store, third) == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored});
  auto agents = *store.agents();
  REQUIRE(agents.size() == 2);
  CHECK(agents[1].agent_id == "b");
  CHECK(agents[1].incarnation == "b2ff0000000000000000000000000001");
  RawDb db(path);
  CHECK(db.integer("SELECT count(*) FROM incarnations") == 3);  // legacy, A, B
  // The views name each batch by (agent_id, incarnation, seq); the first copy of a key stands.
  auto rows = db.rows("SELECT b.incarnation, b.seq, l.p50_ns FROM batches AS b JOIN latency_summaries AS l "
                      "USING (agent_id, incarnation, seq) WHERE agent_id = 'a' ORDER BY b.incarnation, b.seq");
  REQUIRE(rows.size() == 6);
  CHECK(rows[0]["incarnation"].s == "00000000000000000000000000000000");
  CHECK(rows[1]["incarnation"].s == "a102030405060708090a0b0c0d0e0f10");
  CHECK(rows[4]["incarnation"].s == "b2ff0000000000000000000000000001");
  CHECK(rows[4]["seq"].i == 1);
  CHECK(rows[5]["p50_ns"].i == 7'000'000);
  CHECK(db.integer("SELECT count(*) FROM load_samples WHERE incarnation = 'b2ff0000000000000000000000000001'") == 3);
}

TEST_CASE("migration: a version-3 database keeps its batches under the legacy incarnation") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  write_v3_database(path);
  {
    OpenOptions read_only = test_options();
    read_only.read_only = true;
    auto refused = SqliteStore::open(path, read_only);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().find("schema version 3") != std::string::npos);
  }
  SqliteStore store = open_store(path);
  {
    RawDb db(path);
    CHECK(db.integer("PRAGMA user_version") == SqliteStore::kSchemaVersion);
    CHECK(db.integer("SELECT count(*) FROM batches WHERE incarnation = '00000000000000000000000000000000'") == 2);
    CHECK(db.text("SELECT sql FROM sqlite_master WHERE name = 'batches_d20260921_key'")
              .find("(agent, incarnation, seq)") != std::string::npos);
    CHECK(db.text("PRAGMA integrity_check") == "ok");
  }
  const std::vector<BatchKey> migrated{{kLegacyIncarnation, 1}, {kLegacyIncarnation, 2}};
  CHECK(*store.batch_keys("fra-1") == migrated);
  auto latest = *store.latest_latency();
  REQUIRE(latest.size() == 1);
  CHECK(latest[0].p50_ns == 200);
  auto agents = *store.agents();
  REQUIRE(agents.size() == 1);
  CHECK(agents[0].incarnation == "00000000000000000000000000000000");
  CHECK(agents[0].max_seq == 2);

  // An agent still without incarnations resends seq 2: a duplicate, as before. The same agent,
  // upgraded and under its first incarnation, ships seq 2 and 3: both new.
  Batches in;
  add_under(in, kLegacyIncarnation, "fra-1", 2);
  add_under(in, kIncarnationA, "fra-1", 2);
  add_under(in, kIncarnationA, "fra-1", 3);
  CHECK(outcomes(store, in) == std::vector<StoreOutcome>{StoreOutcome::kDuplicate, StoreOutcome::kStored,
                                                         StoreOutcome::kStored});
  CHECK(*store.seqs("fra-1") == std::vector<std::uint64_t>{1, 2, 2, 3});
  agents = *store.agents();
  CHECK(agents[0].incarnation == incarnation_hex(kIncarnationA));
  CHECK(agents[0].max_seq == 3);
  CHECK(agents[0].batch_count == 4);
}

TEST_CASE("incarnation hex: 32 digits both ways, anything else refused") {
  CHECK(incarnation_hex(kIncarnationA) == "a102030405060708090a0b0c0d0e0f10");
  CHECK(parse_incarnation_hex("A102030405060708090A0B0C0D0E0F10") == kIncarnationA);
  CHECK(parse_incarnation_hex(incarnation_hex(kIncarnationB)) == kIncarnationB);
  CHECK_FALSE(parse_incarnation_hex("a102030405060708090a0b0c0d0e0f1").has_value());
  CHECK_FALSE(parse_incarnation_hex("a102030405060708090a0b0c0d0e0f100").has_value());
  CHECK_FALSE(parse_incarnation_hex("g102030405060708090a0b0c0d0e0f10").has_value());
  CHECK_FALSE(parse_incarnation_hex("").has_value());
}

TEST_CASE("histograms: scheme 1 and scheme 2 buckets are stored as sent and rebuild the agent's percentiles") {
  using vantage::agent::HistogramSummary;
  using vantage::agent::LatencyHistogram;
  using vantage::agent::SparseBucket;
  namespace aggregate = vantage::agent::aggregate;

  // A current agent's summary: RTTs up to a minute, so bucket indices reach past scheme 1's
  // 1984 and up to scheme 2's last (7423): they must survive the 16-bit wire field and the
  // varint BLOB.
  aggregate::IntervalSummary current;
  for (std::uint64_t v = 1'000; v < 60'000'000'000; v += v / 3) {
    current.rtt.record(v);
  }
  current.rtt.record(LatencyHistogram::kOverflowThreshold + 5);
  current.received = current.rtt.count();
  current.sent = current.received;
  current.min_ns = current.rtt.min();
  current.max_ns = current.rtt.max();
  current.mean_ns = current.rtt.mean();
  current.stddev_ns = current.rtt.stddev();
  current.p50_ns = current.rtt.percentile(50);
  current.p90_ns = current.rtt.percentile(90);
  current.p99_ns = current.rtt.percentile(99);
  current.p999_ns = current.rtt.percentile(99.9);
  REQUIRE(current.rtt.to_sparse().back().index == LatencyHistogram::kBucketCount - 1);

  // An older agent's summary (scheme 1), with the percentiles that agent reported.
  const std::vector<wire::HistogramBucket> old_buckets{
      {139, 1},   {1228, 50}, {1229, 61}, {1230, 64}, {1231, 68}, {1232, 63}, {1233, 64},
      {1234, 64}, {1235, 67}, {1236, 61}, {1237, 65}, {1238, 65}, {1239, 68}, {1240, 61},
      {1241, 68}, {1242, 65}, {1243, 33}, {1282, 2},  {1283, 5},  {1284, 4},  {1983, 1}};

  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  latency.push_back(aggregate::build_latency_summary(fbb, "new:7801", current));
  {
    auto target = fbb.CreateString("old:7801");
    auto histogram = fbb.CreateVectorOfStructs(old_buckets);
    wire::LatencySummaryBuilder lb(fbb);
    lb.add_target(target);
    lb.add_protocol(wire::Protocol::UdpEcho);
    lb.add_sent(1000);
    lb.add_received(1000);
    lb.add_min_ns(150);
    lb.add_max_ns(80'000'000'000);
    lb.add_mean_ns(0x1.857b013d0e56p+26);
    lb.add_stddev_ns(0x1.2d581e0bacb33p+31);
    lb.add_p50_ns(21'889'024);
    lb.add_p90_ns(23'724'032);
    lb.add_p99_ns(34'865'152);
    lb.add_p999_ns(35'913'728);
    lb.add_histogram_scheme(1);
    lb.add_histogram(histogram);
    lb.add_histogram_overflow(1);
    latency.push_back(lb.Finish());
  }
  const Bytes batch = finish_batch(fbb, wire::CreateBatchDirect(fbb, "edge-1", 1, kT0, kT0 + kSecond, "eu-central",
                                                                "fra1", &latency));
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(batch, "edge-1");
    auto r = store.store(in.incoming);
    INFO(r.error());
    REQUIRE(r);
  }
  RawDb db(path);
  auto rows = db.rows("SELECT * FROM latency_summaries ORDER BY idx");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["histogram_scheme"].i == 2);
  CHECK(rows[1]["histogram_scheme"].i == 1);
  for (Row& row : rows) {
    CAPTURE(row["target"].s);
    std::vector<SparseBucket> buckets;
    for (const auto& [index, count] : decode_histogram_blob(row["histogram"].s)) {
      buckets.push_back({index, count});
    }
    HistogramSummary summary;
    summary.scheme = static_cast<std::uint8_t>(row["histogram_scheme"].i);
    summary.count = static_cast<std::uint64_t>(row["received"].i);
    summary.min_ns = static_cast<std::uint64_t>(row["min_ns"].i);
    summary.max_ns = static_cast<std::uint64_t>(row["max_ns"].i);
    summary.mean_ns = row["mean_ns"].d;
    summary.stddev_ns = row["stddev_ns"].d;
    summary.overflow = static_cast<std::uint64_t>(row["histogram_overflow"].i);
    summary.dropped = static_cast<std::uint64_t>(row["histogram_dropped"].i);
    const auto rebuilt = LatencyHistogram::from_sparse(summary, buckets);
    INFO(rebuilt.error());
    REQUIRE(rebuilt);
    CHECK(rebuilt->scheme() == summary.scheme);
    CHECK(static_cast<std::int64_t>(rebuilt->percentile(50)) == row["p50_ns"].i);
    CHECK(static_cast<std::int64_t>(rebuilt->percentile(90)) == row["p90_ns"].i);
    CHECK(static_cast<std::int64_t>(rebuilt->percentile(99)) == row["p99_ns"].i);
    CHECK(static_cast<std::int64_t>(rebuilt->percentile(99.9)) == row["p999_ns"].i);
  }
  // The two cannot be merged into one: their buckets mean different ranges.
  std::vector<SparseBucket> old_sparse;
  for (const auto& b : old_buckets) old_sparse.push_back({b.index(), b.count()});
  HistogramSummary old_summary;
  old_summary.scheme = 1;
  old_summary.count = 1000;
  old_summary.min_ns = 150;
  old_summary.max_ns = 80'000'000'000;
  old_summary.overflow = 1;
  old_summary.mean_ns = 0x1.857b013d0e56p+26;
  old_summary.stddev_ns = 0x1.2d581e0bacb33p+31;
  const auto old_histogram = LatencyHistogram::from_sparse(old_summary, old_sparse);
  REQUIRE(old_histogram);
  LatencyHistogram merged = current.rtt;
  CHECK_FALSE(merged.merge(*old_histogram));
}

namespace {

Bytes one_way_at(std::uint64_t seq, OneWayBatchSpec spec = {}) {
  spec.seq = seq;
  spec.interval_start_ns = kT0 + static_cast<std::int64_t>(seq) * kSecond;
  spec.interval_end_ns = spec.interval_start_ns + kSecond;
  return one_way_batch(spec);
}

}  // namespace

TEST_CASE("one-way and clock: a batch's clock state and each summary's one-way figures are stored, an old batch's are NULL") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteStore store = open_store(path);
  Batches in;
  in.add(one_way_at(1), "fra-1");
  in.add(simple_batch("fra-1", 2), "fra-1");  // an older agent: no clock, no one_way
  CHECK(outcomes(store, in) == std::vector<StoreOutcome>(2, StoreOutcome::kStored));

  RawDb db(path);
  auto batches = db.rows("SELECT * FROM batches ORDER BY seq");
  REQUIRE(batches.size() == 2);
  CHECK(batches[0]["clock_synchronised"].i == 1);
  CHECK(batches[0]["clock_estimated_error_ns"].i == kClockEstimatedErrorNs);
  CHECK(batches[0]["clock_maximum_error_ns"].i == kClockMaximumErrorNs);
  CHECK(batches[0]["clock_source"].s == "chrony");
  for (const char* c : {"clock_synchronised", "clock_estimated_error_ns", "clock_maximum_error_ns", "clock_source"}) {
    INFO(c);
    CHECK(batches[1][c].type == SQLITE_NULL);
  }

  auto lat = db.rows("SELECT * FROM latency_summaries ORDER BY seq, idx");
  REQUIRE(lat.size() == 3 + 1);
  Row& stamp = lat[0];
  CHECK(stamp["protocol"].s == "stamp");
  CHECK(stamp["one_way_status"].s == "reported");
  CHECK(stamp["one_way_error_bound_ns"].i == kErrorBoundNs);
  CHECK(stamp["one_way_max_error_fraction"].d == doctest::Approx(0.1));
  CHECK(stamp["sender_synchronised"].i == 1);
  CHECK(stamp["reflector_synchronised"].i == 1);
  CHECK(stamp["sender_error_ns"].i == 40'000);
  CHECK(stamp["reflector_error_ns"].i == 60'000);
  CHECK(stamp["one_way_samples"].i == 10);
  CHECK(stamp["forward_min_ns"].i == 29'000'000);
  CHECK(stamp["forward_p50_ns"].i == kForwardP50Ns);
  CHECK(stamp["forward_p90_ns"].i == 31'000'000);
  CHECK(stamp["forward_p99_ns"].i == kForwardP99Ns);
  CHECK(stamp["forward_max_ns"].i == 32'000'000);
  CHECK(stamp["backward_min_ns"].i == 4'500'000);
  CHECK(stamp["backward_p50_ns"].i == kBackwardP50Ns);
  CHECK(stamp["backward_p90_ns"].i == 6'000'000);
  CHECK(stamp["backward_p99_ns"].i == kBackwardP99Ns);
  CHECK(stamp["backward_max_ns"].i == 7'000'000);
  CHECK(stamp["one_way_histogram_scheme"].i == 2);
  CHECK(decode_histogram_blob(stamp["forward_histogram"].s) ==
        std::vector<std::pair<std::uint16_t, std::uint32_t>>{{1200, 7}, {1210, 3}});
  CHECK(decode_histogram_blob(stamp["backward_histogram"].s) ==
        std::vector<std::pair<std::uint16_t, std::uint32_t>>{{900, 10}});
  CHECK(stamp["stamp_ssid"].i == kStampSsid);
  CHECK(stamp["p50_ns"].i == 35'000'000);  // the round trip is stored as before

  Row& udp = lat[1];
  CHECK(udp["protocol"].s == "udp_echo");
  CHECK(udp["one_way_status"].s == "unsynchronised");
  CHECK(udp["one_way_error_bound_ns"].i == 9'000'000);
  CHECK(udp["sender_synchronised"].i == 0);
  CHECK(udp["forward_p50_ns"].i == 0);
  CHECK(udp["forward_histogram"].type == SQLITE_NULL);
  CHECK(udp["stamp_ssid"].type == SQLITE_NULL);

  // No one_way in the summary (TCP here, and every summary of the old batch): all NULL, not 0.
  for (Row* r : {&lat[2], &lat[3]}) {
    for (const char* c : {"one_way_status", "one_way_error_bound_ns", "one_way_samples", "forward_p50_ns",
                          "backward_p99_ns", "forward_histogram", "stamp_ssid"}) {
      INFO(c);
      CHECK((*r)[c].type == SQLITE_NULL);
    }
  }
  CHECK(lat[3]["p50_ns"].i == 1'000'000);
}

TEST_CASE("one-way: a status other than reported is stored with its reason and no figures") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteStore store = open_store(path);
  Batches in;
  OneWayBatchSpec spec;
  spec.stamp_status = wire::OneWayStatus::BoundTooLarge;
  spec.clock_synchronised = false;
  spec.clock_source = wire::ClockSource::Configured;
  in.add(one_way_at(1, spec), "fra-1");
  CHECK(outcomes(store, in) == std::vector<StoreOutcome>{StoreOutcome::kStored});
  RawDb db(path);
  auto stamp = db.rows("SELECT * FROM latency_summaries WHERE protocol = 'stamp'");
  REQUIRE(stamp.size() == 1);
  CHECK(stamp[0]["one_way_status"].s == "bound_too_large");
  CHECK(stamp[0]["one_way_error_bound_ns"].i == kErrorBoundNs);
  CHECK(stamp[0]["forward_p50_ns"].i == 0);
  CHECK(db.integer("SELECT clock_synchronised FROM batches") == 0);
  CHECK(db.text("SELECT clock_source FROM batches") == "configured");
  CHECK(db.integer("SELECT one_way_status FROM latency_d20260921 WHERE stamp_ssid IS NOT NULL") == 3);
}

TEST_CASE("migration: a version-4 database gains the clock and one-way columns, its rows NULL") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    SqliteStore store = open_store(path);
    Batches in;
    in.add(simple_batch("fra-1", 1), "fra-1");
    CHECK(outcomes(store, in) == std::vector<StoreOutcome>{StoreOutcome::kStored});
  }
  {
    // Back to the version 4 layout: the same tables without the columns version 5 appended.
    RawDb db(path);
    std::string sql = "BEGIN;";
    for (const char* v : {"batches", "latency_summaries", "load_samples", "rtt_samples", "latency_paths", "agent_self"}) {
      sql += std::string("DROP VIEW ") + v + ";";
    }
    for (const char* c : {"clock_synchronised", "clock_estimated_error_ns", "clock_maximum_error_ns", "clock_source"}) {
      sql += std::string("ALTER TABLE batches_d20260921 DROP COLUMN ") + c + ";";
    }
    for (const char* c : {"one_way_status", "one_way_error_bound_ns", "one_way_max_error_fraction",
                          "sender_synchronised", "reflector_synchronised", "sender_error_ns", "reflector_error_ns",
                          "one_way_samples", "forward_min_ns", "forward_p50_ns", "forward_p90_ns", "forward_p99_ns",
                          "forward_max_ns", "backward_min_ns", "backward_p50_ns", "backward_p90_ns",
                          "backward_p99_ns", "backward_max_ns", "one_way_histogram_scheme", "forward_histogram",
                          "backward_histogram", "stamp_ssid"}) {
      sql += std::string("ALTER TABLE latency_d20260921 DROP COLUMN ") + c + ";";
    }
    db.exec(sql + "PRAGMA user_version=4;COMMIT;");
    CHECK(db.integer("SELECT count(*) FROM pragma_table_info('latency_d20260921')") == 31);
  }
  {
    OpenOptions read_only = test_options();
    read_only.read_only = true;
    auto refused = SqliteStore::open(path, read_only);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().find("schema version 4") != std::string::npos);
  }
  SqliteStore store = open_store(path);
  Batches in;
  in.add(one_way_at(2), "fra-1");
  CHECK(outcomes(store, in) == std::vector<StoreOutcome>{StoreOutcome::kStored});
  RawDb db(path);
  CHECK(db.integer("PRAGMA user_version") == SqliteStore::kSchemaVersion);
  CHECK(db.text("PRAGMA integrity_check") == "ok");
  auto batches = db.rows("SELECT seq, clock_synchronised, clock_source FROM batches ORDER BY seq");
  REQUIRE(batches.size() == 2);
  CHECK(batches[0]["clock_synchronised"].type == SQLITE_NULL);
  CHECK(batches[1]["clock_source"].s == "chrony");
  auto lat = db.rows("SELECT seq, protocol, one_way_status, forward_p50_ns FROM latency_summaries ORDER BY seq, idx");
  REQUIRE(lat.size() == 4);
  CHECK(lat[0]["one_way_status"].type == SQLITE_NULL);
  CHECK(lat[1]["one_way_status"].s == "reported");
  CHECK(lat[1]["forward_p50_ns"].i == kForwardP50Ns);
  auto latest = *store.latest_latency();
  REQUIRE(latest.size() == 4);
  // By pop, agent, target, protocol: ams1:443 (tcp), ams1:7000, router1:862, t1 (the old batch).
  CHECK_FALSE(latest[0].one_way_status.has_value());
  CHECK(latest[1].one_way_status == 2);
  CHECK(latest[2].one_way_status == 1);
  CHECK(latest[2].forward_p50_ns == kForwardP50Ns);
  CHECK(latest[2].backward_p50_ns == kBackwardP50Ns);
  CHECK_FALSE(latest[3].one_way_status.has_value());
}
