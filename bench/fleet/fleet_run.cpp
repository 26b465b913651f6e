#include "bench/fleet/fleet_run.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace vantage::fleet {

using Clock = std::chrono::steady_clock;

std::string format_bytes(std::uint64_t bytes) {
  char out[32];
  std::snprintf(out, sizeof out, "%.1f MiB", static_cast<double>(bytes) / 1048576.0);
  return out;
}

FleetRun::FleetRun(const Options& o, std::string scenario) : options(o), report(std::move(scenario)) {}

FleetRun::~FleetRun() {
  fleet.reset();
  for (auto& c : collectors) c->kill9();
  if (made_work_dir_ && !keep_work_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(work_dir, ec);
  }
}

bool FleetRun::prepare_work_dir(std::string& error) {
  if (work_dir_ready_) return true;
  keep_work_dir_ = options.flag("keep-work-dir");
  per_source = std::max<std::size_t>(options.count("per-source", 100), 1);
  if (options.has("work-dir")) {
    work_dir = options.text("work-dir");
    std::filesystem::create_directories(work_dir);
  } else {
    std::string tmpl = (std::filesystem::temp_directory_path() / "vantage-fleet-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      error = "mkdtemp failed";
      return false;
    }
    work_dir = tmpl;
    made_work_dir_ = true;
  }
  work_dir_ready_ = true;
  report.text("work_dir", work_dir.string(), "work directory");
  return true;
}

FleetShape FleetShape::read(const Options& options) const {
  FleetShape s;
  s.agents = options.count("agents", agents);
  s.targets = options.count("targets", targets);
  s.interval_s = options.number("interval-s", interval_s);
  s.duration_s = options.number("duration-s", duration_s);
  return s;
}

int setup_failed(const std::string& error) {
  std::fprintf(stderr, "vantage-fleet: %s\n", error.c_str());
  return 2;
}

bool FleetRun::setup(std::size_t agents, std::size_t targets, std::string& error) {
  const std::string binary = options.text("collector");
  if (binary.empty()) {
    error = "--collector PATH (the vantage-collector binary) is required";
    return false;
  }
  if (!prepare_work_dir(error)) return false;
  report.number("fd_limit", static_cast<double>(raise_fd_limit()), "simulator fd limit");

  const auto t0 = Clock::now();
  pki = FleetPki::create(!options.flag("per-agent-keys"), error);
  if (!pki) return false;
  const std::vector<std::string> user_lines = options.all("collector-config-extra");
  std::vector<std::string> lines;
  for (const std::string& line : collector_lines) {
    const bool overridden = std::any_of(user_lines.begin(), user_lines.end(), [&line](const std::string& u) {
      return config_key(u) == config_key(line);
    });
    if (!overridden) lines.push_back(line);
  }
  lines.insert(lines.end(), user_lines.begin(), user_lines.end());
  for (std::size_t k = 0; k < std::max<std::size_t>(collector_count, 1); ++k) {
    CollectorSetup cs;
    cs.binary = binary;
    cs.work_dir = collector_count > 1 ? work_dir / ("collector-" + std::to_string(k + 1)) : work_dir;
    cs.regions = regions;
    cs.extra_lines = lines;
    cs.log_level = options.text("collector-log-level", "info");
    collectors.push_back(std::make_unique<CollectorHarness>(cs));
    if (!collectors.back()->prepare(*pki, error)) return false;
  }
  collector = collectors.front().get();

  factory = std::make_unique<BatchFactory>(targets, static_cast<std::uint32_t>(agents), 42);
  // Certificates, then one TlsContext per agent (its own saved session, as a real agent has).
  const auto mint_start = Clock::now();
  std::vector<CertAndKey> certs;
  certs.reserve(agents);
  for (std::size_t i = 0; i < agents; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "agent-%05zu", i);
    AgentIdentity identity;
    identity.agent_id = id;
    identity.region = regions[i % regions.size()];
    char pop[32];
    std::snprintf(pop, sizeof pop, "pop%03zu", i / per_source);
    identity.pop = pop;
    identity.index = static_cast<std::uint32_t>(i);
    certs.push_back(pki->mint_agent(identity.agent_id, identity.region, identity.pop, error));
    if (certs.back().cert_pem.empty()) return false;
    agent_setups.push_back({std::move(identity), nullptr});
  }
  const double mint_s = std::chrono::duration<double>(Clock::now() - mint_start).count();
  const auto context_start = Clock::now();
  for (std::size_t i = 0; i < agents; ++i) {
    platform::tls::TlsContextOptions tls;
    tls.role = platform::tls::TlsRole::kClient;
    tls.ca_pem = pki->ca_pem();
    tls.cert_pem = std::move(certs[i].cert_pem);
    tls.key_pem = std::move(certs[i].key_pem);
    auto context = platform::tls::TlsContext::create(tls);
    if (!context) {
      error = agent_setups[i].identity.agent_id + ": " + context.error();
      return false;
    }
    agent_setups[i].tls = std::move(context).value();
  }
  const double context_s = std::chrono::duration<double>(Clock::now() - context_start).count();
  report.section("certificates (mbedTLS x509write, ECDSA P-256)");
  report.text("agent_keys", options.flag("per-agent-keys") ? "per-agent" : "shared",
              "agent key pairs (--per-agent-keys: one each)");
  report.number("certs_minted", static_cast<double>(agents), "agent certificates minted");
  report.number("certs_per_s", mint_s > 0 ? static_cast<double>(agents) / mint_s : 0, "minting rate", "certs/s");
  report.number("tls_contexts_per_s", context_s > 0 ? static_cast<double>(agents) / context_s : 0,
                "client TLS contexts made", "contexts/s");
  const auto [lo, hi] = factory->bucket_range();
  report.number("histogram_buckets_min", static_cast<double>(lo), "non-empty histogram buckets, min");
  report.number("histogram_buckets_max", static_cast<double>(hi), "non-empty histogram buckets, max");
  report.number("targets", static_cast<double>(targets), "latency summaries per batch");

  for (auto& c : collectors) {
    if (!c->start(error)) return false;
  }
  report.number("setup_s", std::chrono::duration<double>(Clock::now() - t0).count(), "setup time", "s", 1);
  return true;
}

Fleet& FleetRun::make_fleet(std::chrono::nanoseconds report_interval) {
  FleetOptions fo;
  fo.collector = collector->endpoint();
  if (collectors.size() > 1) {
    for (const auto& c : collectors) fo.collectors.push_back(c->endpoint());
  }
  fo.io_threads = options.count("io-threads", 2);
  fo.max_handshakes_in_flight = options.count("handshakes-in-flight", 128);
  fo.agents_per_source = per_source;
  fo.report_interval = report_interval;
  fleet = std::make_unique<Fleet>(fo, *factory, std::move(agent_setups));
  return *fleet;
}

namespace {

// Every collector's sample, and their sum (CPU, RSS and peak RSS added up).
ProcessSample sample_collectors(const std::vector<std::unique_ptr<CollectorHarness>>& collectors,
                                std::vector<ProcessSample>& each) {
  ProcessSample sum;
  sum.ok = true;
  each.clear();
  for (const auto& c : collectors) {
    each.push_back(sample_process(c->pid()));
    sum.cpu_s += each.back().cpu_s;
    sum.rss_bytes += each.back().rss_bytes;
    sum.hwm_bytes += each.back().hwm_bytes;
    sum.ok = sum.ok && each.back().ok;
  }
  return sum;
}

}  // namespace

Window FleetRun::begin() const {
  Window w;
  w.start = Clock::now();
  w.collector_start = sample_collectors(collectors, w.each_start);
  w.self_start = self_cpu_s();
  return w;
}

void FleetRun::end(Window& w) const {
  w.stop = Clock::now();
  w.collector_stop = sample_collectors(collectors, w.each_stop);
  w.self_stop = self_cpu_s();
}

void FleetRun::report_window(const Window& w, const std::string& prefix, const std::string& what_in) {
  const double s = w.seconds();
  const std::string what =
      collectors.size() > 1 ? what_in + " (" + std::to_string(collectors.size()) + " collectors summed)" : what_in;
  report.number(prefix + "window_s", s, what + ": window", "s", 1);
  report.number(prefix + "collector_cpu_s", w.collector_cpu_s(), what + ": collector CPU", "s", 2);
  report.number(prefix + "collector_cores", s > 0 ? w.collector_cpu_s() / s : 0, what + ": collector CPU", "cores", 3);
  report.number(prefix + "collector_rss_bytes", static_cast<double>(w.collector_stop.rss_bytes),
                what + ": collector RSS at end (" + format_bytes(w.collector_stop.rss_bytes) + ")", "bytes");
  report.number(prefix + "collector_hwm_bytes", static_cast<double>(w.collector_stop.hwm_bytes),
                what + ": collector peak RSS (" + format_bytes(w.collector_stop.hwm_bytes) + ")", "bytes");
  report.number(prefix + "simulator_cores", s > 0 ? w.self_cpu_s() / s : 0, what + ": simulator CPU (apart)", "cores", 3);
}

StoreCheck FleetRun::stop_and_check() {
  const std::vector<AgentRecord> records = fleet->records();
  fleet->shutdown();
  const auto status = collector->stop();
  report.section("store check (SQLite, read-only, after SIGTERM)");
  report.number("collector_exit", status ? *status : -1, "collector exit status (-1: killed)");
  StoreCheck check = check_store(collector->database(), records);
  if (!check.error.empty()) report.text("store_error", check.error, "store error");
  report.number("store_acked", static_cast<double>(check.acked), "batches acked to the fleet");
  report.number("store_rows", static_cast<double>(check.stored), "batches stored for the fleet");
  report.number("store_missing", static_cast<double>(check.missing), "acked but missing (lost)");
  report.number("store_duplicates", static_cast<double>(check.duplicates), "stored more than once");
  report.number("store_unacked_stored", static_cast<double>(check.unacked_stored),
                "stored but never acked (in flight at the end)");
  report.number("store_foreign", static_cast<double>(check.foreign), "stored under an incarnation never sent");
  return check;
}

}  // namespace vantage::fleet
