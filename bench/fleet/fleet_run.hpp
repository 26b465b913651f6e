// FleetRun: what every scenario starts from: a work directory, the PKI, the agents' identities
// and TLS contexts, the batch factory and a running collector; plus the collector's CPU and
// memory over a measured window.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/fleet/batch_factory.hpp"
#include "bench/fleet/collector_harness.hpp"
#include "bench/fleet/fleet.hpp"
#include "bench/fleet/fleet_pki.hpp"
#include "bench/fleet/options.hpp"
#include "bench/fleet/report.hpp"

namespace vantage::fleet {

// CPU (collector's and the simulator's own) and the collector's memory between begin() and end().
// With several collectors, collector_* sum them and each_* hold them one by one.
struct Window {
  std::chrono::steady_clock::time_point start, stop;
  ProcessSample collector_start, collector_stop;
  std::vector<ProcessSample> each_start, each_stop;
  double self_start = 0.0, self_stop = 0.0;
  double seconds() const { return std::chrono::duration<double>(stop - start).count(); }
  double collector_cpu_s() const { return collector_stop.cpu_s - collector_start.cpu_s; }
  double self_cpu_s() const { return self_stop - self_start; }
};

// The fleet options most scenarios read (--agents, --targets, --interval-s, --duration-s), over
// each scenario's defaults: `const auto [agents, targets, interval_s, duration_s] =
// FleetShape{.duration_s = 120}.read(options);`
struct FleetShape {
  std::size_t agents = 1000;
  std::size_t targets = 100;
  double interval_s = 10;
  double duration_s = 60;
  FleetShape read(const Options& options) const;
};

// A scenario that cannot run: says why on stderr and gives its exit status.
int setup_failed(const std::string& error);

class FleetRun {
 public:
  FleetRun(const Options& options, std::string scenario);
  ~FleetRun();

  // The work directory (--work-dir, or a new temporary one); setup() calls it, a scenario may call
  // it before to put its own processes there.
  bool prepare_work_dir(std::string& error);
  // Work dir, PKI, collector (started), agent certificates and TLS contexts, batch factory.
  bool setup(std::size_t agents, std::size_t targets, std::string& error);
  // The fleet over the agents made by setup() (once).
  Fleet& make_fleet(std::chrono::nanoseconds report_interval);

  Window begin() const;
  void end(Window& w) const;
  // Collector CPU and memory lines for a window, keys prefixed.
  void report_window(const Window& w, const std::string& prefix, const std::string& what);
  // Stops the collector (SIGTERM) and checks the store; adds the figures to the report.
  StoreCheck stop_and_check();

  const Options& options;
  Report report;
  std::filesystem::path work_dir;
  std::unique_ptr<FleetPki> pki;
  std::unique_ptr<BatchFactory> factory;
  // Set before setup(): how many collectors (more than one: each in work_dir/collector-K, agents
  // spread over them round-robin) and config lines for all of them (a key also given by
  // --collector-config-extra is left to that).
  std::size_t collector_count = 1;
  std::vector<std::string> collector_lines;
  std::vector<std::unique_ptr<CollectorHarness>> collectors;
  CollectorHarness* collector = nullptr;  // the first of collectors
  std::unique_ptr<Fleet> fleet;
  std::vector<AgentSetup> agent_setups;
  std::vector<std::string> regions = {"eu-central", "eu-west", "us-east"};
  std::size_t per_source = 100;

 private:
  bool keep_work_dir_ = false;
  bool made_work_dir_ = false;
  bool work_dir_ready_ = false;
};

std::string format_bytes(std::uint64_t bytes);

}  // namespace vantage::fleet
