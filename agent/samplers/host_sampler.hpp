// Host load over an interval (CPU time split, memory, pressure, load average, interface rates,
// temperatures, CPU frequencies) from two successive /proc and /sys snapshots, and its wire form.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "platform/host_readers.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::agent::samplers {

// The structs below mirror vantage.wire's LoadSample parts field for field, in double precision.

// Ratios of the ticks that elapsed on one CPU during the interval; they sum to 1.
struct CpuUsage {
  std::int32_t cpu = -1;  // -1 is the all-CPU total
  double user = 0.0;      // includes nice
  double system = 0.0;
  double iowait = 0.0;
  double steal = 0.0;
  double irq = 0.0;
  double softirq = 0.0;
  double idle = 0.0;
  std::uint32_t freq_khz = 0;  // at the end of the interval; 0 where cpufreq is absent and for the total
};

// At the end of the interval; 0 where meminfo could not be read.
struct MemoryUsage {
  std::uint64_t total_bytes = 0;
  std::uint64_t available_bytes = 0;
  std::uint64_t swap_total_bytes = 0;
  std::uint64_t swap_free_bytes = 0;
  std::uint64_t dirty_bytes = 0;
};

// avg10 percentages; kAbsent where the kernel lacks PSI or the value could not be read.
struct Pressure {
  static constexpr double kAbsent = -1.0;
  double cpu_some_avg10 = kAbsent;
  double memory_some_avg10 = kAbsent;
  double memory_full_avg10 = kAbsent;
  double io_some_avg10 = kAbsent;
  double io_full_avg10 = kAbsent;
};

// kAbsent where proc/loadavg could not be read.
struct LoadAverage {
  static constexpr double kAbsent = -1.0;
  double one = kAbsent;
  double five = kAbsent;
  double fifteen = kAbsent;
};

struct NetRates {
  double rx_bytes_per_s = 0.0;
  double tx_bytes_per_s = 0.0;
  double rx_packets_per_s = 0.0;
  double tx_packets_per_s = 0.0;
  double rx_errors_per_s = 0.0;
  double tx_errors_per_s = 0.0;
  double rx_drops_per_s = 0.0;
  double tx_drops_per_s = 0.0;
};

struct NetInterface {
  std::string name;           // the name at the end of the interval
  std::int64_t ifindex = -1;  // -1 where sysfs did not say
  NetRates rates;
};

struct Temperature {
  std::string sensor;
  double celsius = 0.0;
};

struct HostLoad {
  std::int64_t interval_ns = 0;
  std::vector<CpuUsage> cpus;  // the total first (when /proc/stat had it), then CPUs in file order
  MemoryUsage memory;
  Pressure pressure;
  LoadAverage load_average;
  std::vector<NetInterface> net;  // interfaces seen at both ends of the interval with sane counters
  std::vector<Temperature> temperatures;
};

// Counters are per-interface and per-CPU state carried from one sample to the next, so one
// sampler serves one host root and is called from one thread.
class HostSampler {
 public:
  explicit HostSampler(std::filesystem::path root);

  // Reads a snapshot under the root. Returns nullptr on the first call (there is no interval
  // yet) and when the clock has not advanced; otherwise the load since the previous call, valid
  // until the next one. Problems, including skipped CPUs and interfaces, are in errors().
  const HostLoad* sample(std::int64_t now_monotonic_ns);

  // The same from a snapshot read elsewhere (replays, tests that step through captured trees).
  const HostLoad* sample(platform::HostSnapshot snapshot, std::int64_t now_monotonic_ns);

  // Problems found by the last sample() call.
  std::span<const platform::ReadError> errors() const noexcept { return errors_; }

 private:
  void compute_cpus(const platform::HostSnapshot& current);
  void compute_net(const platform::HostSnapshot& current, double seconds);

  platform::HostReader reader_;
  platform::HostSnapshot previous_;
  std::int64_t previous_ns_ = 0;
  bool has_previous_ = false;
  HostLoad load_;
  std::vector<platform::ReadError> errors_;
};

// How a counter moved between two readings. A counter that went backwards either wrapped
// (drivers that keep 32-bit counters, 32-bit kernels; in principle 64-bit ones) or was reset
// (driver reload, interface down/up on some NICs).
struct CounterDelta {
  std::uint64_t delta = 0;
  bool valid = false;  // false for a reset: the interval says nothing about this counter
};
CounterDelta counter_delta(std::uint64_t previous, std::uint64_t current) noexcept;

// Appends a LoadSample for `load` to fbb; wall_time_ns labels it (ns since the Unix epoch).
flatbuffers::Offset<wire::LoadSample> build_load_sample(flatbuffers::FlatBufferBuilder& fbb,
                                                        const HostLoad& load, std::int64_t wall_time_ns);

}  // namespace vantage::agent::samplers
