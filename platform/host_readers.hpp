// Parsers for the /proc and /sys files behind the host-load samples, one snapshot at a time, under
// a root directory ("/" in production, a captured tree in tests), reporting bad input per field.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vantage::platform {

// One problem with one value. File contents are untrusted: a bad field is reported here and the
// rest of the file is still read.
struct ReadError {
  std::string file;        // relative to the root, e.g. "proc/stat"
  std::uint32_t line = 0;  // 1-based; 0 when the problem is not about one line
  std::string field;       // e.g. "cpu1.iowait"; empty when the whole file is at fault
  std::string message;

  // "proc/stat:3: cpu1.iowait: not a number ('12x')", "proc/meminfo: missing".
  std::string to_string() const;

  friend bool operator==(const ReadError&, const ReadError&) = default;
};

// USER_HZ ticks since boot from one /proc/stat cpu line. guest and guest_nice are not kept: the
// kernel already counts them inside user and nice, and adding them would count them twice.
struct CpuTimes {
  std::int32_t cpu = -1;  // -1 is the all-CPU "cpu" line
  std::uint64_t user = 0;
  std::uint64_t nice = 0;
  std::uint64_t system = 0;
  std::uint64_t idle = 0;
  std::uint64_t iowait = 0;  // columns from here on are absent on old kernels and read as 0
  std::uint64_t irq = 0;
  std::uint64_t softirq = 0;
  std::uint64_t steal = 0;

  friend bool operator==(const CpuTimes&, const CpuTimes&) = default;
};

// CpuTimes' counters by their /proc/stat column names, in the file's order.
struct CpuTimesColumn {
  const char* name;
  std::uint64_t CpuTimes::*member;
};
inline constexpr std::array<CpuTimesColumn, 8> kCpuTimesColumns{{{"user", &CpuTimes::user},
                                                                 {"nice", &CpuTimes::nice},
                                                                 {"system", &CpuTimes::system},
                                                                 {"idle", &CpuTimes::idle},
                                                                 {"iowait", &CpuTimes::iowait},
                                                                 {"irq", &CpuTimes::irq},
                                                                 {"softirq", &CpuTimes::softirq},
                                                                 {"steal", &CpuTimes::steal}}};

struct ProcStat {
  std::optional<CpuTimes> total;
  std::vector<CpuTimes> cpus;  // in file order; a line with any bad field is left out whole
  std::vector<ReadError> errors;
};

// Each value is empty when its line is missing or bad.
struct MemInfo {
  std::optional<std::uint64_t> total_bytes;
  std::optional<std::uint64_t> available_bytes;
  std::optional<std::uint64_t> swap_total_bytes;
  std::optional<std::uint64_t> swap_free_bytes;
  std::optional<std::uint64_t> dirty_bytes;
  std::vector<ReadError> errors;
};

struct NetDevCounters {
  std::string name;
  std::int64_t ifindex = -1;  // from sys/class/net/<name>/ifindex; -1 when sysfs lacks it
  std::uint64_t rx_bytes = 0;
  std::uint64_t rx_packets = 0;
  std::uint64_t rx_errors = 0;
  std::uint64_t rx_drops = 0;
  std::uint64_t tx_bytes = 0;
  std::uint64_t tx_packets = 0;
  std::uint64_t tx_errors = 0;
  std::uint64_t tx_drops = 0;
};

struct NetDev {
  std::vector<NetDevCounters> interfaces;  // in file order; a line with any bad field is left out
  std::vector<ReadError> errors;
};

// One "some" or "full" line of a /proc/pressure file.
struct PressureLine {
  double avg10 = 0.0;
  double avg60 = 0.0;
  double avg300 = 0.0;
  std::uint64_t total_us = 0;
};

struct PressureFile {
  bool present = false;  // false on kernels without PSI (or with psi=0): not an error
  std::optional<PressureLine> some;
  std::optional<PressureLine> full;  // cpu has no "full" line before Linux 5.13
};

struct ProcPressure {
  PressureFile cpu;
  PressureFile memory;
  PressureFile io;
  std::vector<ReadError> errors;
};

struct LoadAvg {
  std::optional<double> one;
  std::optional<double> five;
  std::optional<double> fifteen;
  std::vector<ReadError> errors;
};

struct TemperatureReading {
  std::string sensor;  // "thermal_zone0/cpu-thermal", "hwmon1/nvme/Composite", "hwmon0/cpu_thermal/temp1"
  double celsius = 0.0;
};

struct Temperatures {
  std::vector<TemperatureReading> readings;  // thermal zones by number, then hwmon by number
  std::vector<ReadError> errors;
};

struct CpuFrequency {
  std::int32_t cpu = 0;
  std::uint32_t khz = 0;
};

struct CpuFrequencies {
  std::vector<CpuFrequency> cpus;  // by CPU number; CPUs without cpufreq are absent
  std::vector<ReadError> errors;
};

// Everything one sample needs; errors collects those of every part.
struct HostSnapshot {
  ProcStat stat;
  MemInfo memory;
  NetDev net;
  ProcPressure pressure;
  LoadAvg load_average;
  Temperatures temperatures;
  CpuFrequencies frequencies;
  std::vector<ReadError> errors;
};

// Reads files into one buffer that is kept between calls, so a sampler reading once a second
// stops allocating for file contents after the first round. Not thread-safe.
class HostReader {
 public:
  explicit HostReader(std::filesystem::path root);

  const std::filesystem::path& root() const noexcept { return root_; }

  ProcStat read_proc_stat();              // proc/stat (required)
  MemInfo read_meminfo();                 // proc/meminfo (required)
  NetDev read_net_dev();                  // proc/net/dev (required), sys/class/net/*/ifindex
  ProcPressure read_pressure();           // proc/pressure/{cpu,memory,io} (optional)
  LoadAvg read_loadavg();                 // proc/loadavg (required)
  Temperatures read_temperatures();       // sys/class/thermal, sys/class/hwmon (optional)
  CpuFrequencies read_cpu_frequencies();  // sys/devices/system/cpu/cpu*/cpufreq (optional)
  HostSnapshot read_snapshot();

 private:
  enum class Load : std::uint8_t { kOk, kAbsent, kFailed };

  // Fills buffer_ with the file's contents. kAbsent when it does not exist (an error only if
  // required); kFailed (always with an error) when it exists but cannot be read.
  Load load(const std::string& relative, bool required, std::vector<ReadError>& errors);
  std::string_view contents() const noexcept { return {buffer_.data(), size_}; }

  // base, then '/' and the printable contents of name_file where it reads (a sensor's name).
  std::string named(std::string base, const std::string& name_file, std::vector<ReadError>& errors);
  // One reading of sensor from a sysfs temperature file.
  void read_temperature(const std::string& file, std::string sensor, Temperatures& out);
  void read_thermal_zones(Temperatures& out);
  void read_hwmon(Temperatures& out);

  std::filesystem::path root_;
  std::string buffer_;
  std::size_t size_ = 0;
};

}  // namespace vantage::platform
