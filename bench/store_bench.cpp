// Cost of the collector's SQLite store: realistic batches (100 latency summaries with sparse
// histograms of 20-60 buckets, one load sample) from N agents through SqliteStore::store() in
// groups, synchronous=FULL on a real file; next to it, the schema v2 layout (text keys,
// WITHOUT ROWID, the latency_by_target index) fed by a bare insert loop. Then the read side on
// what was stored: latest_latency(), agents(), latest_load_per_pop(), seqs() and a one-pair,
// one-hour pair_history().
//
// usage: store_bench [--agents 1000] [--targets 100] [--intervals 360] [--group 100]
//                    [--v2-intervals 30] [--cache-kib 65536] [--dir /var/tmp] [--keep]
// The full hour (1,000 x 100 x 360 = 36M summaries) needs ~15 GB of disk; --intervals 30 is a
// quick run. Only the time inside store() (or the v2 loop) counts, not building the batches.
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "collector/store/sqlite_store.hpp"
#include "tests/collector/old_schemas.hpp"
#include "vantage/telemetry_generated.h"

namespace {

namespace wire = vantage::wire;
namespace store = vantage::collector::store;
using Clock = std::chrono::steady_clock;

constexpr std::int64_t kSecond = 1'000'000'000;
// 2026-09-21 01:00 UTC: an hour's run stays in one day partition.
constexpr std::int64_t kStart = 20717 * store::kPartitionNs + 3600 * kSecond;
constexpr std::int64_t kInterval = 10 * kSecond;

struct Options {
  int agents = 1000;
  int targets = 100;
  int intervals = 360;
  int group = 100;
  int v2_intervals = 30;
  int cache_kib = 64 * 1024;
  std::string dir = "/var/tmp";
  bool keep = false;
};

std::int64_t cpu_ns() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const auto ns = [](const timeval& t) {
    return static_cast<std::int64_t>(t.tv_sec) * kSecond + static_cast<std::int64_t>(t.tv_usec) * 1000;
  };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string agent_name(int a) { return "pop" + std::to_string(a / 10) + "-edge-" + std::to_string(a % 10); }
std::string pop_name(int a) { return "pop" + std::to_string(a / 10); }
std::string target_name(int t) {
  return "10.0." + std::to_string(t / 250) + "." + std::to_string(t % 250) + ":7801";
}

// One agent's batch for one interval, shaped as its aggregator would send it.
std::vector<std::uint8_t> build_batch(flatbuffers::FlatBufferBuilder& fbb, std::mt19937_64& rng, int agent,
                                      std::uint64_t seq, std::int64_t end, int targets) {
  fbb.Clear();
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  std::vector<wire::HistogramBucket> buckets;
  const std::string id = agent_name(agent);
  for (int t = 0; t < targets; ++t) {
    const int n = 20 + static_cast<int>(rng() % 41);
    std::uint16_t index = static_cast<std::uint16_t>(200 + rng() % 200);
    buckets.clear();
    for (int b = 0; b < n; ++b) {
      index = static_cast<std::uint16_t>(index + 1 + rng() % 3);
      buckets.emplace_back(index, static_cast<std::uint32_t>(1 + rng() % 50));
    }
    const auto p50 = static_cast<std::int64_t>(1'000'000 + rng() % 50'000'000);
    latency.push_back(wire::CreateLatencySummaryDirect(
        fbb, target_name(t).c_str(), wire::Protocol::UdpEcho, 100, 99, 1, 0, 0, 0, 0, 1, p50 / 2, p50 * 3,
        static_cast<double>(p50), 1234.5, p50, p50 + 1000, p50 + 5000, p50 + 9000, 800.0, 4000,
        wire::TimestampSource::Kernel, 1, &buckets));
  }
  std::vector<wire::CpuUsage> cpus{{-1, 0.25f, 0.125f, 0.01f, 0.0f, 0.0f, 0.01f, 0.6f, 0},
                                   {0, 0.25f, 0.125f, 0.01f, 0.0f, 0.0f, 0.01f, 0.6f, 2'400'000},
                                   {1, 0.25f, 0.125f, 0.01f, 0.0f, 0.0f, 0.01f, 0.6f, 2'400'000}};
  wire::MemoryUsage mem(8ull << 30, 5ull << 30, 1 << 20, 0, 0);
  wire::LoadAverage la(0.5f, 0.4f, 0.3f);
  wire::Pressure psi(0.1f, 0.0f, 0.0f, 0.2f, 0.1f);
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSampleDirect(fbb, end - kSecond, "amd64", &cpus, &mem, &psi, &la)};
  const auto batch = wire::CreateBatchDirect(fbb, id.c_str(), seq, end - kInterval, end, "eu-central",
                                             pop_name(agent).c_str(), &latency, &load);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Batch, batch.Union()));
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

struct Run {
  std::int64_t summaries = 0;
  std::int64_t cpu_ns = 0;
  double wall_s = 0;
};

void report(const char* what, const Run& r) {
  std::printf("%-46s %10lld summaries %9.0f /CPU-s %9.0f /wall-s  (CPU %.1f s, wall %.1f s)\n", what,
              static_cast<long long>(r.summaries),
              static_cast<double>(r.summaries) / (static_cast<double>(r.cpu_ns) / 1e9),
              static_cast<double>(r.summaries) / r.wall_s, static_cast<double>(r.cpu_ns) / 1e9, r.wall_s);
}

// Builds every interval's batches group by group (agents in order, as a collector's store thread
// sees a fleet reporting at once) and hands each group to `sink`; only the sink's time counts.
template <typename Sink>
Run feed(const Options& o, int intervals, Sink&& sink) {
  Run run;
  flatbuffers::FlatBufferBuilder fbb(64 * 1024);
  std::mt19937_64 rng(42);
  std::vector<std::vector<std::uint8_t>> frames;
  std::vector<const wire::Batch*> batches;
  std::vector<int> agents;
  for (int i = 0; i < intervals; ++i) {
    const std::int64_t end = kStart + (i + 1) * kInterval;
    for (int a0 = 0; a0 < o.agents; a0 += o.group) {
      frames.clear();
      batches.clear();
      agents.clear();
      for (int a = a0; a < std::min(o.agents, a0 + o.group); ++a) {
        frames.push_back(build_batch(fbb, rng, a, static_cast<std::uint64_t>(i + 1), end, o.targets));
        agents.push_back(a);
      }
      for (const auto& f : frames) batches.push_back(wire::GetFrame(f.data())->message_as_Batch());
      const auto w0 = Clock::now();
      const std::int64_t c0 = cpu_ns();
      sink(batches, agents);
      run.cpu_ns += cpu_ns() - c0;
      run.wall_s += seconds_since(w0);
      run.summaries += static_cast<std::int64_t>(batches.size()) * o.targets;
    }
  }
  return run;
}

void check(int rc, sqlite3* db, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    std::fprintf(stderr, "store_bench: %s: %s\n", what, sqlite3_errmsg(db));
    std::exit(1);
  }
}

// The schema v2 layout exactly as the collector created it before v3.
using vantage::collector::store::old_schema::kOldSchemaV1;
using vantage::collector::store::old_schema::kOldSchemaV2;


// The v2 peer: one transaction per group, the agent upsert, the batch and its rows through
// prepared statements, the histogram BLOB built as v2 did (a fresh std::string per summary).
Run run_v2(const Options& o, const std::string& path) {
  sqlite3* db = nullptr;
  check(sqlite3_open(path.c_str(), &db), db, "open");
  const std::string pragmas = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-" +
                              std::to_string(o.cache_kib);
  check(sqlite3_exec(db, pragmas.c_str(), nullptr, nullptr, nullptr), db, "pragma");
  check(sqlite3_exec(db, kOldSchemaV1, nullptr, nullptr, nullptr), db, "schema");
  check(sqlite3_exec(db, kOldSchemaV2, nullptr, nullptr, nullptr), db, "schema");
  sqlite3_stmt *agent = nullptr, *batch = nullptr, *lat = nullptr, *load = nullptr;
  check(sqlite3_prepare_v2(db,
                           "INSERT INTO agents VALUES (?1, 'eu-central', ?2, 'amd64', '0.1', ?3, ?3) "
                           "ON CONFLICT(agent_id) DO UPDATE SET last_seen_ns = excluded.last_seen_ns",
                           -1, &agent, nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db,
                           "INSERT OR IGNORE INTO batches VALUES (?1, ?2, ?3, ?4, ?4, 'eu-central', ?5, ?6, 1, 0, 0)",
                           -1, &batch, nullptr),
        db, "prepare");
  const auto insert = [](const char* table, int n) {
    std::string sql = std::string("INSERT INTO ") + table + " VALUES (";
    for (int i = 1; i <= n; ++i) sql += (i > 1 ? ",?" : "?") + std::to_string(i);
    return sql + ")";
  };
  check(sqlite3_prepare_v2(db, insert("latency_summaries", 36).c_str(), -1, &lat, nullptr), db, "prepare");
  check(sqlite3_prepare_v2(db, insert("load_samples", 30).c_str(), -1, &load, nullptr), db, "prepare");
  Run r = feed(o, o.v2_intervals, [&](const std::vector<const wire::Batch*>& batches, const std::vector<int>&) {
    check(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), db, "begin");
    for (const wire::Batch* b : batches) {
      const char* id = b->agent_id()->c_str();
      const auto seq = static_cast<std::int64_t>(b->seq());
      sqlite3_bind_text(agent, 1, id, -1, SQLITE_STATIC);
      sqlite3_bind_text(agent, 2, b->pop()->c_str(), -1, SQLITE_STATIC);
      sqlite3_bind_int64(agent, 3, b->interval_end_ns());
      check(sqlite3_step(agent), db, "agent");
      sqlite3_reset(agent);
      sqlite3_bind_text(batch, 1, id, -1, SQLITE_STATIC);
      sqlite3_bind_int64(batch, 2, seq);
      sqlite3_bind_int64(batch, 3, b->interval_start_ns());
      sqlite3_bind_int64(batch, 4, b->interval_end_ns());
      sqlite3_bind_text(batch, 5, b->pop()->c_str(), -1, SQLITE_STATIC);
      sqlite3_bind_int64(batch, 6, b->latency()->size());
      check(sqlite3_step(batch), db, "batch");
      sqlite3_reset(batch);
      int idx = 0;
      for (const wire::LatencySummary* l : *b->latency()) {
        std::string blob;
        for (const wire::HistogramBucket* h : *l->histogram()) {
          const std::uint16_t i = h->index();
          const std::uint32_t c = h->count();
          blob += static_cast<char>(i & 0xff);
          blob += static_cast<char>(i >> 8);
          for (int shift = 0; shift < 32; shift += 8) blob += static_cast<char>((c >> shift) & 0xff);
        }
        int k = 0;
        sqlite3_bind_text(lat, ++k, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(lat, ++k, seq);
        sqlite3_bind_int64(lat, ++k, idx++);
        sqlite3_bind_text(lat, ++k, l->target()->c_str(), -1, SQLITE_STATIC);
        sqlite3_bind_text(lat, ++k, "udp_echo", -1, SQLITE_STATIC);
        for (std::int64_t v : {std::int64_t{l->sent()}, std::int64_t{l->received()}, std::int64_t{l->lost()},
                               std::int64_t{l->late()}, std::int64_t{l->reordered()},
                               std::int64_t{l->duplicates()}, std::int64_t{l->lost_outbound()},
                               std::int64_t{l->lost_inbound()}, l->min_ns(), l->max_ns()}) {
          sqlite3_bind_int64(lat, ++k, v);
        }
        sqlite3_bind_double(lat, ++k, l->mean_ns());
        sqlite3_bind_double(lat, ++k, l->stddev_ns());
        for (std::int64_t v : {l->p50_ns(), l->p90_ns(), l->p99_ns(), l->p999_ns()}) sqlite3_bind_int64(lat, ++k, v);
        sqlite3_bind_double(lat, ++k, l->jitter_mean_ns());
        sqlite3_bind_int64(lat, ++k, l->jitter_p99_ns());
        sqlite3_bind_text(lat, ++k, "kernel", -1, SQLITE_STATIC);
        sqlite3_bind_int64(lat, ++k, l->histogram_scheme());
        sqlite3_bind_blob(lat, ++k, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
        for (int z = 0; z < 8; ++z) sqlite3_bind_int64(lat, ++k, 0);
        sqlite3_bind_int64(lat, ++k, b->interval_start_ns());
        sqlite3_bind_int64(lat, ++k, b->interval_end_ns());
        check(sqlite3_step(lat), db, "latency");
        sqlite3_reset(lat);
      }
      const wire::LoadSample* s = b->load()->Get(0);
      sqlite3_bind_text(load, 1, id, -1, SQLITE_STATIC);
      sqlite3_bind_int64(load, 2, seq);
      sqlite3_bind_int64(load, 3, 0);
      sqlite3_bind_int64(load, 4, s->time_ns());
      sqlite3_bind_text(load, 5, "amd64", -1, SQLITE_STATIC);
      for (int c = 6; c <= 27; ++c) sqlite3_bind_double(load, c, 0.5);
      for (int c = 28; c <= 30; ++c) sqlite3_bind_text(load, c, "[]", -1, SQLITE_STATIC);
      check(sqlite3_step(load), db, "load");
      sqlite3_reset(load);
    }
    check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), db, "commit");
  });
  for (sqlite3_stmt* s : {agent, batch, lat, load}) sqlite3_finalize(s);
  sqlite3_close(db);
  return r;
}

template <typename F>
double best_ms(F&& f, int reps = 3) {
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const auto t = Clock::now();
    f();
    best = std::min(best, seconds_since(t) * 1e3);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "store_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    // An option that takes a count: true when `a` is that flag.
    const auto count = [&](const char* flag, int& field) {
      if (a != flag) return false;
      field = std::atoi(value());
      return true;
    };
    if (a == "--dir") {
      o.dir = value();
    } else if (a == "--keep") {
      o.keep = true;
    } else if (!(count("--agents", o.agents) || count("--targets", o.targets) ||
                 count("--intervals", o.intervals) || count("--group", o.group) ||
                 count("--v2-intervals", o.v2_intervals) || count("--cache-kib", o.cache_kib))) {
      std::fprintf(stderr,
                   "usage: store_bench [--agents N] [--targets N] [--intervals N] [--group N] "
                   "[--v2-intervals N] [--cache-kib N] [--dir DIR] [--keep]\n");
      return 2;
    }
  }
  if (o.agents < 1 || o.targets < 1 || o.intervals < 1 || o.group < 1 || o.intervals > 8000) {
    std::fprintf(stderr, "store_bench: counts must be positive (intervals at most 8000: one day)\n");
    return 2;
  }
  const std::string base = o.dir + "/store_bench-" + std::to_string(getpid());
  std::filesystem::create_directories(base);
  std::printf("store_bench: %d agents x %d targets, 10 s intervals, %d batches per store() call, "
              "synchronous=FULL, WAL, cache %d KiB, %s (SQLite %s)\n",
              o.agents, o.targets, o.group, o.cache_kib, base.c_str(), sqlite3_libversion());

  if (o.v2_intervals > 0) {
    const Run v2 = run_v2(o, base + "/v2.db");
    char what[96];
    std::snprintf(what, sizeof what, "schema v2, bare insert loop, %d intervals", o.v2_intervals);
    report(what, v2);
    std::filesystem::remove(base + "/v2.db");
    std::filesystem::remove(base + "/v2.db-wal");
    std::filesystem::remove(base + "/v2.db-shm");
  }

  store::OpenOptions options;
  options.retention_days = 0;  // the data is dated 2026-09-21 whatever today is
  options.cache_kib = o.cache_kib;
  auto opened = store::SqliteStore::open(base + "/v3.db", options);
  if (!opened) {
    std::fprintf(stderr, "store_bench: %s\n", opened.error().c_str());
    return 1;
  }
  store::SqliteStore& db = *opened;
  std::vector<std::string> names;
  for (int a = 0; a < o.agents; ++a) names.push_back(agent_name(a));
  std::vector<store::IncomingBatch> incoming;
  std::int64_t commit_ns = 0;
  std::int64_t calls = 0;
  const Run v3 = feed(o, o.intervals, [&](const std::vector<const wire::Batch*>& batches, const std::vector<int>& agents) {
    incoming.clear();
    for (std::size_t i = 0; i < batches.size(); ++i) {
      store::IncomingBatch in;
      in.batch = batches[i];
      in.agent_id = names[static_cast<std::size_t>(agents[i])];
      in.region = "eu-central";
      in.received_ns = batches[i]->interval_end_ns() + kSecond;
      incoming.push_back(in);
    }
    auto r = db.store(incoming);
    if (!r) {
      std::fprintf(stderr, "store_bench: %s\n", r.error().c_str());
      std::exit(1);
    }
    commit_ns += db.last_commit_ns();
    ++calls;
  });
  char what[96];
  std::snprintf(what, sizeof what, "schema v3, SqliteStore::store(), %d intervals", o.intervals);
  report(what, v3);
  std::printf("  mean COMMIT (the fsync) %.2f ms per call of %d batches; database %.0f MiB\n",
              static_cast<double>(commit_ns) / static_cast<double>(calls) / 1e6, o.group,
              static_cast<double>(std::filesystem::file_size(base + "/v3.db")) / 1048576.0);

  std::size_t n = 0;
  std::printf("read side on %lld stored summaries (best of 3):\n", static_cast<long long>(v3.summaries));
  std::printf("  latest_latency()        %9.1f ms", best_ms([&] { n = db.latest_latency()->size(); }));
  std::printf("  (%zu pairs)\n", n);
  std::printf("  agents()                %9.1f ms", best_ms([&] { n = db.agents()->size(); }));
  std::printf("  (%zu agents)\n", n);
  std::printf("  latest_load_per_pop()   %9.1f ms", best_ms([&] { n = db.latest_load_per_pop()->size(); }));
  std::printf("  (%zu PoPs)\n", n);
  const std::string agent = agent_name(o.agents / 2);
  const std::string target = target_name(o.targets / 2);
  const std::string pop = pop_name(o.agents / 2);
  store::PairHistoryQuery q;
  q.agent_id = agent;
  q.target = target;
  q.from_ns = kStart;
  q.to_ns = kStart + 3600 * kSecond + 1;
  std::printf("  pair_history(1 h)       %9.1f ms", best_ms([&] { n = db.pair_history(q)->size(); }));
  std::printf("  (%zu intervals, %s -> %s)\n", n, agent.c_str(), target.c_str());
  q.agent_id = {};
  q.pop = pop;
  std::printf("  pair_history(PoP, 1 h)  %9.1f ms", best_ms([&] { n = db.pair_history(q)->size(); }));
  std::printf("  (%zu intervals from %s's agents)\n", n, pop.c_str());
  std::printf("  seqs(agent)             %9.1f ms", best_ms([&] { n = db.seqs(agent)->size(); }));
  std::printf("  (%zu seqs)\n", n);
  if (!o.keep) std::filesystem::remove_all(base);
  return 0;
}
