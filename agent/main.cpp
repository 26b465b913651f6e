// vantage-agent: the edge daemon's entry point. Settings come from the command line or from a
// TOML file (--config); under systemd it speaks the notify protocol (READY, WATCHDOG, STATUS,
// RELOADING on SIGHUP, STOPPING on SIGTERM).
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/cli.hpp"
#include "agent/config.hpp"
#include "agent/measurement.hpp"
#include "agent/report_format.hpp"
#include "agent/ship/target_list.hpp"
#include "agent/version.hpp"
#include "platform/clock.hpp"
#include "platform/log.hpp"
#include "platform/result.hpp"
#include "platform/sd_notify.hpp"

namespace {

using vantage::agent::AgentOptions;
using vantage::agent::Measurement;
using vantage::agent::MeasurementReport;
using vantage::agent::ship::AcceptedTargetList;
using vantage::agent::ship::SelfBaseline;
using vantage::agent::ship::Shipper;
using vantage::platform::log;
using vantage::platform::LogLevel;
using namespace std::chrono_literals;

// Waits for one of the signals, or until the timeout; returns the signal or 0. The signals are
// blocked in every thread (the mask is set before any starts), so this is the only place they land.
int wait_for_signal(const sigset_t& signals, std::chrono::nanoseconds timeout) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(seconds.count());
  ts.tv_nsec = static_cast<long>((timeout - seconds).count());
  for (;;) {
    const int s = ::sigtimedwait(&signals, nullptr, &ts);
    if (s > 0) {
      return s;
    }
    if (errno != EINTR) {
      return 0;  // EAGAIN: the timeout passed
    }
  }
}

// Where the shipper's thread leaves the collector's latest target list for the main loop, which
// it wakes with SIGUSR1 (blocked everywhere, so it lands in the loop's sigtimedwait). Only the
// newest list matters: one that arrives before the loop took the previous replaces it.
struct TargetListMailbox {
  std::mutex mutex;
  std::optional<AcceptedTargetList> pending;

  void post(AcceptedTargetList list) {
    {
      std::lock_guard lock(mutex);
      pending = std::move(list);
    }
    ::kill(::getpid(), SIGUSR1);
  }
  std::optional<AcceptedTargetList> take() {
    std::lock_guard lock(mutex);
    return std::exchange(pending, std::nullopt);
  }
};

// The mesh list the agent runs (merged with the configured targets), if any.
struct MeshState {
  std::optional<AcceptedTargetList> list;
  std::uint64_t version() const { return list ? list->version : 0; }
};

bool accepts_target_lists(const AgentOptions& options) {
  return options.shipping && !options.once_seconds &&
         (options.shipping->capabilities & vantage::agent::ship::kCapabilityTargetList) != 0;
}

// The running parts for one set of options: a reload replaces the whole set, a new mesh list
// only the measurement.
struct Running {
  std::unique_ptr<Shipper> shipper;
  std::unique_ptr<Measurement> measurement;
  // The counters of the latest report, written by the sink on the aggregator thread and read
  // after finish() has joined it.
  std::shared_ptr<vantage::agent::MeasurementCounters> last_counters =
      std::make_shared<vantage::agent::MeasurementCounters>();
  bool print = true;
  // The mesh list version the measurement runs and how many of its targets came from it.
  std::shared_ptr<std::atomic<std::uint64_t>> list_version = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::size_t from_mesh = 0;
};

// The measurement's config: the configured targets plus the mesh's (local ones win).
vantage::agent::MeasurementConfig merged_config(const AgentOptions& options, const MeshState& mesh,
                                                std::size_t& from_mesh) {
  vantage::agent::MeasurementConfig m = options.measurement;
  const bool mesh_on = accepts_target_lists(options) && mesh.list;
  auto merged = vantage::agent::ship::merge_targets(options.measurement.targets, mesh_on ? &*mesh.list : nullptr);
  if (merged.shadowed > 0) {
    log(LogLevel::kInfo, "mesh list v%llu: %zu of its targets are configured locally, the local ones are probed",
        static_cast<unsigned long long>(mesh.version()), merged.shadowed);
  }
  from_mesh = merged.from_mesh;
  m.targets = std::move(merged.targets);
  return m;
}

// Starts a measurement of config into r (its shipper, if any, already running); on failure logs
// why and leaves r.measurement null.
bool start_measurement(Running& r, const AgentOptions& options, vantage::agent::MeasurementConfig config,
                       std::uint64_t list_version, std::size_t from_mesh) {
  r.measurement = std::make_unique<Measurement>(std::move(config));
  r.last_counters = std::make_shared<vantage::agent::MeasurementCounters>();
  r.list_version = std::make_shared<std::atomic<std::uint64_t>>(list_version);
  r.from_mesh = from_mesh;
  const auto targets = r.measurement->config().targets;
  Shipper* ship = r.shipper.get();
  const bool json = options.json;
  const bool print = r.print;
  auto last_counters = r.last_counters;
  auto version = r.list_version;
  auto sink = [targets, json, print, ship, last_counters, version](MeasurementReport&& report) {
    *last_counters = report.counters;
    if (print) {
      if (json) {
        vantage::agent::write_json(stdout, report, targets);
      } else {
        vantage::agent::write_table(stdout, report, targets);
      }
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
    if (ship != nullptr) {
      ship->submit(std::move(report), targets, version->load(std::memory_order_relaxed));
    }
  };
  const auto started = r.measurement->start(sink);
  if (!started) {
    log(LogLevel::kError, "%s", started.message().c_str());
    r.measurement.reset();
    return false;
  }
  return true;
}

// Starts the shipper (when configured) and the measurement; on failure logs why and returns
// nothing, with whatever had started stopped again. baseline: what this process counted before
// (earlier configurations), so the batches' self-metrics stay cumulative across reloads.
std::optional<Running> start(const AgentOptions& options, const SelfBaseline& baseline, const MeshState& mesh,
                             const std::shared_ptr<TargetListMailbox>& mailbox) {
  Running r;
  std::size_t from_mesh = 0;
  vantage::agent::MeasurementConfig config = merged_config(options, mesh, from_mesh);
  const std::uint64_t list_version = accepts_target_lists(options) && mesh.list ? mesh.version() : 0;
  if (options.shipping) {
    vantage::agent::ship::ShipperConfig shipping = *options.shipping;
    shipping.self_baseline = baseline;
    shipping.target_list_version = list_version;
    if (accepts_target_lists(options)) {
      shipping.on_target_list = [mailbox](AcceptedTargetList list) { mailbox->post(std::move(list)); };
    } else {
      shipping.capabilities &= ~vantage::agent::ship::kCapabilityTargetList;
    }
    std::vector<std::string> warnings;
    auto opened = Shipper::open(std::move(shipping), warnings);
    for (const std::string& warning : warnings) {
      log(LogLevel::kWarning, "spool: %s", warning.c_str());
    }
    if (!opened) {
      log(LogLevel::kError, "%s", opened.error().c_str());
      return std::nullopt;
    }
    r.shipper = std::move(opened).value();
    r.shipper->start();
  }
  // Without a collector the reports go to stdout; with one, to the spool (and stdout for --once).
  r.print = !r.shipper || options.once_seconds.has_value();
  if (!start_measurement(r, options, std::move(config), list_version, from_mesh)) {
    if (r.shipper) {
      r.shipper->stop(0ms);
    }
    return std::nullopt;
  }
  if (const auto endpoint = r.measurement->reflector_endpoint()) {
    log(LogLevel::kInfo, "reflector listening on %s port %u", endpoint->address().to_string().c_str(),
        static_cast<unsigned>(endpoint->port()));
  }
  if (const auto endpoint = r.measurement->stamp_reflector_endpoint()) {
    log(LogLevel::kInfo, "STAMP reflector listening on %s port %u", endpoint->address().to_string().c_str(),
        static_cast<unsigned>(endpoint->port()));
  }
  return r;
}

// Ends the measurement alone (its final report goes to the shipper) and carries what it counted
// into baseline and into the running shipper's, so the next measurement's counts add to them.
void finish_measurement(Running& r, SelfBaseline& baseline) {
  r.measurement->finish();
  const vantage::agent::MeasurementCounters& m = *r.last_counters;
  const std::uint64_t probe = m.udp.events_dropped + m.tcp.ring_full + m.icmp.ring_full;
  baseline.probe_ring_dropped += probe;
  baseline.load_ring_dropped += m.loads_dropped;
  if (r.shipper) {
    r.shipper->add_measurement_baseline(probe, m.loads_dropped);
  }
  r.measurement.reset();
}

// Ends the measurement cleanly (its final report goes to the spool) and drains the shipper;
// adds what they counted to baseline.
void stop(Running& r, std::chrono::milliseconds drain, SelfBaseline& baseline) {
  r.measurement->finish();
  const vantage::agent::MeasurementCounters& m = *r.last_counters;
  baseline.probe_ring_dropped += m.udp.events_dropped + m.tcp.ring_full + m.icmp.ring_full;
  baseline.load_ring_dropped += m.loads_dropped;
  if (r.shipper) {
    r.shipper->stop(drain);
    const auto c = r.shipper->counters();
    add_to_baseline(baseline, c);
    log(LogLevel::kInfo, "stopped: %llu batches spooled, acked through %llu, %llu still spooled",
        static_cast<unsigned long long>(c.batches_spooled), static_cast<unsigned long long>(c.acked_seq),
        static_cast<unsigned long long>(c.spool.records));
  }
}

// A list the collector sent: kept on disk first (a restart with the collector away starts with
// it), then applied like a reload of the measurement alone. The shipper and its session keep
// running (they delivered the list); the old measurement's last partial interval is shipped.
// A list that changes no target is adopted without a restart. Returns false when neither the new
// nor the previous targets start (the daemon exits).
bool apply_target_list(AcceptedTargetList list, const AgentOptions& options, Running& r, MeshState& mesh,
                       SelfBaseline& baseline) {
  const std::uint64_t version = list.version;
  if (!accepts_target_lists(options)) {
    return true;  // posted by a shipper a reload has since replaced with one that takes no lists
  }
  if (mesh.list && version == mesh.version()) {
    return true;  // the collector resent what runs (e.g. after a reconnect)
  }
  if (const auto st = vantage::agent::ship::save_target_list(options.shipping->spool.dir, list.frame); !st) {
    log(LogLevel::kWarning, "mesh list v%llu: not kept on disk (%s); applied anyway",
        static_cast<unsigned long long>(version), st.message().c_str());
  }
  MeshState next;
  next.list = std::move(list);
  std::size_t from_mesh = 0;
  vantage::agent::MeasurementConfig config = merged_config(options, next, from_mesh);
  if (vantage::agent::ship::same_targets(config.targets, r.measurement->config().targets)) {
    r.list_version->store(version, std::memory_order_relaxed);
    r.from_mesh = from_mesh;
    if (r.shipper) r.shipper->set_target_list_version(version);
    log(LogLevel::kInfo, "mesh list v%llu: same targets, adopted without a restart",
        static_cast<unsigned long long>(version));
    mesh = std::move(next);
    return true;
  }
  vantage::agent::MeasurementConfig previous = r.measurement->config();
  const std::uint64_t previous_version = r.list_version->load(std::memory_order_relaxed);
  const std::size_t previous_from_mesh = r.from_mesh;
  finish_measurement(r, baseline);
  if (start_measurement(r, options, std::move(config), version, from_mesh)) {
    if (r.shipper) r.shipper->set_target_list_version(version);
    log(LogLevel::kInfo, "mesh list v%llu running: %zu targets (%zu from the mesh list)",
        static_cast<unsigned long long>(version), r.measurement->config().targets.size(), from_mesh);
    mesh = std::move(next);
    return true;
  }
  log(LogLevel::kError, "mesh list v%llu: the measurement did not start, going back to v%llu",
      static_cast<unsigned long long>(version), static_cast<unsigned long long>(previous_version));
  // The kept list is the one that runs: a restart must not start with one that does not.
  const std::filesystem::path& dir = options.shipping->spool.dir;
  if (mesh.list) {
    if (const auto st = vantage::agent::ship::save_target_list(dir, mesh.list->frame); !st) {
      log(LogLevel::kWarning, "mesh list v%llu: not kept on disk again (%s)",
          static_cast<unsigned long long>(mesh.version()), st.message().c_str());
    }
  } else {
    std::error_code ignored;
    std::filesystem::remove(dir / vantage::agent::ship::kTargetListFileName, ignored);
  }
  if (!start_measurement(r, options, std::move(previous), previous_version, previous_from_mesh)) {
    log(LogLevel::kError, "mesh list: the previous targets no longer start either, exiting");
    return false;
  }
  return true;
}

// "12 targets (10 from mesh list v7)".
std::string targets_summary(const Running& r) {
  std::string s = std::to_string(r.measurement->config().targets.size()) + " targets";
  if (const std::uint64_t version = r.list_version->load(std::memory_order_relaxed); version != 0) {
    s += " (" + std::to_string(r.from_mesh) + " from mesh list v" + std::to_string(version) + ")";
  }
  return s;
}

std::string status_line(const Running& r) {
  std::string s = targets_summary(r);
  // Names without an address are probed once they resolve (agent/name_resolver.hpp).
  if (const std::size_t unresolved = r.measurement->unresolved_targets(); unresolved > 0) {
    s += " (" + std::to_string(unresolved) + " unresolved)";
  }
  if (r.shipper) {
    const auto c = r.shipper->counters();
    s += c.connected ? ", connected" : ", not connected";
    s += ", acked through " + std::to_string(c.acked_seq) + ", spool " + std::to_string(c.spool.records) +
         " batches";
    if (c.spool.dropped_total > 0) s += " (" + std::to_string(c.spool.dropped_total) + " dropped)";
    if (c.spool.lost() > 0) s += ", " + std::to_string(c.spool.lost()) + " lost to disk errors";
    if (c.spool.sync_stalled_ms > 0) {
      s += ", spool fsync stalled for " + std::to_string(c.spool.sync_stalled_ms / 1000) + " s";
    }
    if (!c.connected && !c.last_error.empty()) s += "; " + c.last_error;
  }
  return s;
}

// Healthy when the aggregator loop ran within the last few report-poll periods and the shipper's
// thread answers: a wedged thread stops the watchdog pings and systemd restarts the agent. Neither
// thread waits on the disk for long: spool fsyncs run on the spool's sync worker (a hung one is a
// stall in STATUS and the logs, not a restart, which could not unhang the disk anyway).
bool healthy(const Running& r) {
  const std::int64_t beat = r.measurement->aggregator_heartbeat_ns();
  const bool aggregator = beat != 0 && vantage::platform::monotonic_ns() - beat < 5'000'000'000;
  return aggregator && (!r.shipper || r.shipper->responsive(2s));
}

std::optional<AgentOptions> load(const std::string& path) {
  vantage::agent::AgentConfig config = vantage::agent::load_config(path);
  for (const std::string& e : config.errors) {
    log(LogLevel::kError, "%s", e.c_str());
  }
  if (!config.options) {
    return std::nullopt;
  }
  vantage::platform::set_log_level(config.log_level);
  return config.options;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread starts: glibc would give each thread that allocates (aggregator, shipper,
  // sampler, resolver) an arena of its own, and pages touched there stay resident; the agent
  // allocates little and seldom, so one arena costs no contention. A fixed mmap threshold stops
  // glibc from raising it (and the trim threshold with it) after the first large free, so a
  // report's large blocks go back to the kernel once it is shipped instead of staying in the heap.
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  vantage::platform::set_log_identity("vantage-agent");
  std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.size() == 1 && args[0] == "--config-reference") {
    // The config file's keys as a Markdown table, from the same table that parses and checks it.
    std::fputs(vantage::agent::config_reference_markdown().c_str(), stdout);
    return 0;
  }

  // --config FILE [--check-config]: the daemon's settings from TOML; nothing else may be mixed in.
  std::optional<std::string> config_path;
  bool check_only = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--check-config") {
      check_only = true;
    } else if (args[i] == "--config" && i + 1 < args.size()) {
      config_path = std::string(args[++i]);
    } else if (config_path || check_only) {
      std::fprintf(stderr, "vantage-agent: --config takes no other arguments ('%.*s')\n",
                   static_cast<int>(args[i].size()), args[i].data());
      return 2;
    }
  }
  if (check_only && !config_path) {
    std::fputs("vantage-agent: --check-config needs --config FILE\n", stderr);
    return 2;
  }

  std::optional<AgentOptions> parsed;
  if (config_path) {
    parsed = load(*config_path);
    if (!parsed) {
      return 1;
    }
    if (check_only) {
      std::printf("%s: ok (%zu targets)\n", config_path->c_str(), parsed->measurement.targets.size());
      return 0;
    }
  } else {
    vantage::platform::Result<AgentOptions> cli = vantage::agent::parse_args(args);
    if (!cli) {
      std::fprintf(stderr, "vantage-agent: %s\n%s", cli.error().c_str(), vantage::agent::usage_text());
      return 2;
    }
    parsed = std::move(cli).value();
  }
  AgentOptions options = std::move(*parsed);
  if (options.show_version) {
    std::puts(vantage::agent::version_line().c_str());
    return 0;
  }
  if (options.show_help) {
    std::fputs(vantage::agent::usage_text(), stdout);
    return 0;
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);  // a target list from the collector waits in the mailbox
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  SelfBaseline baseline;  // config_generation 1
  auto mailbox = std::make_shared<TargetListMailbox>();
  MeshState mesh;
  if (accepts_target_lists(options)) {
    // The last list the collector sent: probed from the start, also while the collector is away.
    std::vector<std::string> warnings;
    mesh.list = vantage::agent::ship::load_target_list(options.shipping->spool.dir, warnings,
                                                       options.shipping->target_list_limits);
    for (const std::string& warning : warnings) {
      log(LogLevel::kWarning, "mesh list: %s", warning.c_str());
    }
    if (mesh.list) {
      log(LogLevel::kInfo, "mesh list v%llu from disk: %zu targets",
          static_cast<unsigned long long>(mesh.version()), mesh.list->targets.size());
    }
  }
  std::optional<Running> running = start(options, baseline, mesh, mailbox);
  if (!running && mesh.list) {
    // The kept list may be what fails (its targets): the configured targets alone still run,
    // and the collector sends a list again once connected.
    log(LogLevel::kWarning, "mesh list v%llu: the agent did not start with it, starting without it",
        static_cast<unsigned long long>(mesh.version()));
    mesh.list.reset();
    running = start(options, baseline, mesh, mailbox);
  }
  if (!running) {
    return 1;
  }

  if (options.once_seconds) {
    const auto duration = std::chrono::nanoseconds(static_cast<std::int64_t>(*options.once_seconds * 1e9));
    // An interrupt ends the run early but still prints what was measured.
    const auto end = std::chrono::steady_clock::now() + duration;
    while (std::chrono::steady_clock::now() < end) {
      const int s = wait_for_signal(signals, end - std::chrono::steady_clock::now());
      if (s == SIGINT || s == SIGTERM) break;
    }
    stop(*running, options.drain, baseline);
    return 0;
  }

  // The daemon: READY once measuring and the spool is open, then a loop that pings the
  // watchdog while healthy, refreshes STATUS, reloads on SIGHUP and drains on SIGTERM.
  vantage::platform::sd_notify_ready();
  const auto watchdog_interval = vantage::platform::watchdog_interval();
  std::optional<vantage::platform::Watchdog> watchdog;
  std::chrono::nanoseconds tick = 1s;
  if (watchdog_interval) {
    watchdog.emplace(*watchdog_interval);
    tick = std::min<std::chrono::nanoseconds>(tick, watchdog->kick_period());
  }
  for (;;) {
    if (watchdog) {
      watchdog->kick_if_healthy(healthy(*running));
    }
    vantage::platform::sd_notify_status(status_line(*running) + ", config generation " +
                                        std::to_string(baseline.config_generation));
    vantage::platform::flush_log_suppressions();
    const int s = wait_for_signal(signals, tick);
    if (s == SIGINT || s == SIGTERM) {
      log(LogLevel::kInfo, "stopping: draining for up to %lld ms",
          static_cast<long long>(options.drain.count()));
      vantage::platform::sd_notify_stopping();
      stop(*running, options.drain, baseline);
      return 0;
    }
    // Every turn, not only on SIGUSR1: a list posted while a reload ran is not missed.
    if (std::optional<AcceptedTargetList> list = mailbox->take()) {
      if (!apply_target_list(std::move(*list), options, *running, mesh, baseline)) {
        return 1;
      }
    }
    if (s != SIGHUP) {
      continue;
    }
    vantage::platform::sd_notify_reloading();
    if (!config_path) {
      log(LogLevel::kNotice, "reload: started without --config, nothing to re-read");
      vantage::platform::sd_notify_ready();
      continue;
    }
    std::optional<AgentOptions> next = load(*config_path);
    if (!next) {
      log(LogLevel::kError, "reload: %s has errors, keeping the running configuration", config_path->c_str());
      vantage::platform::sd_notify_ready();
      continue;
    }
    // The spool is on disk, so stopping the shipper loses nothing: the new one replays it.
    stop(*running, 0ms, baseline);
    ++baseline.config_generation;
    std::optional<Running> replacement = start(*next, baseline, mesh, mailbox);
    if (!replacement) {
      log(LogLevel::kError, "reload: the new configuration did not start, going back to the running one");
      --baseline.config_generation;
      replacement = start(options, baseline, mesh, mailbox);
      if (!replacement) {
        log(LogLevel::kError, "reload: the previous configuration no longer starts either, exiting");
        return 1;
      }
    } else {
      options = std::move(*next);
      log(LogLevel::kInfo, "reload: configuration generation %llu running: %s",
          static_cast<unsigned long long>(baseline.config_generation), targets_summary(*replacement).c_str());
    }
    running = std::move(replacement);
    vantage::platform::sd_notify_ready();
  }
}
