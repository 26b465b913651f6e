#include "agent/samplers/host_sampler.hpp"

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "platform/arch.hpp"
#include "schemas/peer_text.hpp"

namespace vantage::agent::samplers {

namespace {

using platform::CpuTimes;
using platform::NetDevCounters;
using platform::ReadError;

constexpr double kNsPerSecond = 1e9;

std::string cpu_label(std::int32_t cpu) { return cpu < 0 ? std::string("cpu") : "cpu" + std::to_string(cpu); }

std::optional<CpuUsage> cpu_usage(const CpuTimes& before, const CpuTimes& after,
                                  std::vector<ReadError>& errors) {
  for (const platform::CpuTimesColumn& column : platform::kCpuTimesColumns) {
    // iowait is left out: the kernel documents that it can decrease (it is an estimate kept per
    // runqueue, not a tick count), so a drop there is clamped to zero instead of voiding the CPU.
    if (column.member == &CpuTimes::iowait) {
      continue;
    }
    if (after.*column.member < before.*column.member) {
      errors.push_back({"proc/stat", 0, cpu_label(after.cpu) + "." + column.name,
                        "went backwards (CPU hotplug?); CPU skipped for this interval"});
      return std::nullopt;
    }
  }
  const std::uint64_t user = (after.user - before.user) + (after.nice - before.nice);
  const std::uint64_t system = after.system - before.system;
  const std::uint64_t idle = after.idle - before.idle;
  const std::uint64_t iowait = after.iowait >= before.iowait ? after.iowait - before.iowait : 0;
  const std::uint64_t irq = after.irq - before.irq;
  const std::uint64_t softirq = after.softirq - before.softirq;
  const std::uint64_t steal = after.steal - before.steal;
  const std::uint64_t total = user + system + idle + iowait + irq + softirq + steal;
  // Intervals shorter than a tick (USER_HZ is 100) and offline CPUs leave nothing to divide.
  if (total == 0) {
    errors.push_back(
        {"proc/stat", 0, cpu_label(after.cpu), "no ticks elapsed; CPU skipped for this interval"});
    return std::nullopt;
  }
  const auto ratio = [total](std::uint64_t ticks) {
    return static_cast<double>(ticks) / static_cast<double>(total);
  };
  CpuUsage usage;
  usage.cpu = after.cpu;
  usage.user = ratio(user);
  usage.system = ratio(system);
  usage.iowait = ratio(iowait);
  usage.steal = ratio(steal);
  usage.irq = ratio(irq);
  usage.softirq = ratio(softirq);
  usage.idle = ratio(idle);
  return usage;
}

double avg10_or_absent(const platform::PressureFile& file, bool full) {
  const std::optional<platform::PressureLine>& line = full ? file.full : file.some;
  return line ? line->avg10 : Pressure::kAbsent;
}

}  // namespace

CounterDelta counter_delta(std::uint64_t previous, std::uint64_t current) noexcept {
  if (current >= previous) {
    return {current - previous, true};
  }
  // A previous value that fits in 32 bits may come from a 32-bit counter. The distance forward
  // modulo the counter's range is what a wrap would mean; it is believed only when it is under
  // half the range, because a reset (large value to small) looks like a jump of nearly the whole
  // range. A 64-bit counter that wraps is held to the same rule over 2^64.
  constexpr std::uint64_t kMask32 = std::numeric_limits<std::uint32_t>::max();
  const bool narrow = previous <= kMask32;
  const std::uint64_t distance = narrow ? (current - previous) & kMask32 : current - previous;
  const std::uint64_t half = narrow ? std::uint64_t{1} << 31 : std::uint64_t{1} << 63;
  if (distance < half) {
    return {distance, true};
  }
  return {0, false};
}

HostSampler::HostSampler(std::filesystem::path root) : reader_(std::move(root)) {}

const HostLoad* HostSampler::sample(std::int64_t now_monotonic_ns) {
  return sample(reader_.read_snapshot(), now_monotonic_ns);
}

const HostLoad* HostSampler::sample(platform::HostSnapshot snapshot, std::int64_t now_monotonic_ns) {
  errors_ = std::move(snapshot.errors);
  if (!has_previous_) {
    previous_ = std::move(snapshot);
    previous_ns_ = now_monotonic_ns;
    has_previous_ = true;
    return nullptr;
  }
  const std::int64_t interval_ns = now_monotonic_ns - previous_ns_;
  if (interval_ns <= 0) {
    // The earlier snapshot stays the baseline, so the next call still spans a real interval.
    errors_.push_back({"clock", 0, {}, "did not advance since the previous sample"});
    return nullptr;
  }
  const double seconds = static_cast<double>(interval_ns) / kNsPerSecond;

  load_.interval_ns = interval_ns;
  compute_cpus(snapshot);

  const platform::MemInfo& mem = snapshot.memory;
  load_.memory = MemoryUsage{mem.total_bytes.value_or(0), mem.available_bytes.value_or(0),
                             mem.swap_total_bytes.value_or(0), mem.swap_free_bytes.value_or(0),
                             mem.dirty_bytes.value_or(0)};

  const platform::ProcPressure& psi = snapshot.pressure;
  load_.pressure = Pressure{avg10_or_absent(psi.cpu, false), avg10_or_absent(psi.memory, false),
                            avg10_or_absent(psi.memory, true), avg10_or_absent(psi.io, false),
                            avg10_or_absent(psi.io, true)};

  const platform::LoadAvg& loadavg = snapshot.load_average;
  load_.load_average =
      LoadAverage{loadavg.one.value_or(LoadAverage::kAbsent), loadavg.five.value_or(LoadAverage::kAbsent),
                  loadavg.fifteen.value_or(LoadAverage::kAbsent)};

  compute_net(snapshot, seconds);

  load_.temperatures.clear();
  for (const platform::TemperatureReading& reading : snapshot.temperatures.readings) {
    load_.temperatures.push_back({reading.sensor, reading.celsius});
  }

  previous_ = std::move(snapshot);
  previous_ns_ = now_monotonic_ns;
  return &load_;
}

void HostSampler::compute_cpus(const platform::HostSnapshot& current) {
  load_.cpus.clear();
  if (current.stat.total && previous_.stat.total) {
    if (auto usage = cpu_usage(*previous_.stat.total, *current.stat.total, errors_)) {
      load_.cpus.push_back(*usage);
    }
  }
  const std::vector<CpuTimes>& before = previous_.stat.cpus;
  for (std::size_t i = 0; i < current.stat.cpus.size(); ++i) {
    const CpuTimes& after = current.stat.cpus[i];
    // Same position is the usual case; a CPU going offline shifts the rest.
    const CpuTimes* match = i < before.size() && before[i].cpu == after.cpu ? &before[i] : nullptr;
    for (std::size_t j = 0; match == nullptr && j < before.size(); ++j) {
      if (before[j].cpu == after.cpu) {
        match = &before[j];
      }
    }
    if (match == nullptr) {
      continue;  // just came online: no baseline yet
    }
    if (auto usage = cpu_usage(*match, after, errors_)) {
      for (const platform::CpuFrequency& freq : current.frequencies.cpus) {
        if (freq.cpu == after.cpu) {
          usage->freq_khz = freq.khz;
        }
      }
      load_.cpus.push_back(*usage);
    }
  }
}

void HostSampler::compute_net(const platform::HostSnapshot& current, double seconds) {
  struct Counter {
    const char* name;
    std::uint64_t NetDevCounters::*member;
    double NetRates::*rate;
  };
  static constexpr std::array<Counter, 8> kCounters{{
      {"rx_bytes", &NetDevCounters::rx_bytes, &NetRates::rx_bytes_per_s},
      {"tx_bytes", &NetDevCounters::tx_bytes, &NetRates::tx_bytes_per_s},
      {"rx_packets", &NetDevCounters::rx_packets, &NetRates::rx_packets_per_s},
      {"tx_packets", &NetDevCounters::tx_packets, &NetRates::tx_packets_per_s},
      {"rx_errors", &NetDevCounters::rx_errors, &NetRates::rx_errors_per_s},
      {"tx_errors", &NetDevCounters::tx_errors, &NetRates::tx_errors_per_s},
      {"rx_drops", &NetDevCounters::rx_drops, &NetRates::rx_drops_per_s},
      {"tx_drops", &NetDevCounters::tx_drops, &NetRates::tx_drops_per_s},
  }};

  load_.net.clear();
  for (const NetDevCounters& after : current.net.interfaces) {
    // The ifindex outlives renames (systemd's predictable names, container veths moved and
    // renamed) and a name reused by a new device gets a new ifindex, so it is the key; names
    // are the fallback only where sysfs is missing on both sides.
    const NetDevCounters* before = nullptr;
    for (const NetDevCounters& candidate : previous_.net.interfaces) {
      const bool same = after.ifindex > 0 ? candidate.ifindex == after.ifindex
                                          : candidate.ifindex <= 0 && candidate.name == after.name;
      if (same) {
        before = &candidate;
        break;
      }
    }
    if (before == nullptr) {
      continue;  // new interface: its counters start being tracked now
    }
    NetInterface entry;
    bool valid = true;
    for (const Counter& counter : kCounters) {
      const CounterDelta delta = counter_delta(before->*counter.member, after.*counter.member);
      if (!delta.valid) {
        errors_.push_back({"proc/net/dev", 0, after.name + "." + counter.name,
                           "went backwards (counter reset?); interface skipped for this interval"});
        valid = false;
        break;
      }
      entry.rates.*counter.rate = static_cast<double>(delta.delta) / seconds;
    }
    if (valid) {
      entry.name = after.name;
      entry.ifindex = after.ifindex;
      load_.net.push_back(std::move(entry));
    }
  }
}

flatbuffers::Offset<wire::LoadSample> build_load_sample(flatbuffers::FlatBufferBuilder& fbb,
                                                        const HostLoad& load, std::int64_t wall_time_ns) {
  std::vector<wire::CpuUsage> cpus;
  cpus.reserve(load.cpus.size());
  for (const CpuUsage& cpu : load.cpus) {
    cpus.emplace_back(static_cast<std::int16_t>(cpu.cpu), static_cast<float>(cpu.user),
                      static_cast<float>(cpu.system), static_cast<float>(cpu.iowait),
                      static_cast<float>(cpu.steal), static_cast<float>(cpu.irq),
                      static_cast<float>(cpu.softirq), static_cast<float>(cpu.idle), cpu.freq_khz);
  }
  std::vector<flatbuffers::Offset<wire::NetInterface>> net;
  net.reserve(load.net.size());
  for (const NetInterface& iface : load.net) {
    const NetRates& r = iface.rates;
    const wire::NetRates rates(r.rx_bytes_per_s, r.tx_bytes_per_s, r.rx_packets_per_s, r.tx_packets_per_s,
                               r.rx_errors_per_s, r.tx_errors_per_s, r.rx_drops_per_s, r.tx_drops_per_s);
    // Names from /sys may hold any byte: the collector refuses a batch whose strings break its rules.
    net.push_back(wire::CreateNetInterface(fbb, fbb.CreateString(wire::to_peer_text(iface.name, wire::PeerText::kInterface)),
                                           &rates));
  }
  std::vector<flatbuffers::Offset<wire::Temperature>> temperatures;
  temperatures.reserve(load.temperatures.size());
  for (const Temperature& t : load.temperatures) {
    temperatures.push_back(
        wire::CreateTemperature(fbb, fbb.CreateString(wire::to_peer_text(t.sensor, wire::PeerText::kSensor)),
                                static_cast<float>(t.celsius)));
  }

  const MemoryUsage& m = load.memory;
  const wire::MemoryUsage memory(m.total_bytes, m.available_bytes, m.swap_total_bytes, m.swap_free_bytes,
                                 m.dirty_bytes);
  const Pressure& p = load.pressure;
  const wire::Pressure pressure(static_cast<float>(p.cpu_some_avg10), static_cast<float>(p.memory_some_avg10),
                                static_cast<float>(p.memory_full_avg10), static_cast<float>(p.io_some_avg10),
                                static_cast<float>(p.io_full_avg10));
  const LoadAverage& l = load.load_average;
  const wire::LoadAverage load_average(static_cast<float>(l.one), static_cast<float>(l.five),
                                       static_cast<float>(l.fifteen));

  const auto arch = fbb.CreateString(platform::kArchName.data(), platform::kArchName.size());
  const auto cpus_vector = fbb.CreateVectorOfStructs(cpus);
  const auto net_vector = fbb.CreateVector(net);
  const auto temperatures_vector = fbb.CreateVector(temperatures);
  return wire::CreateLoadSample(fbb, wall_time_ns, arch, cpus_vector, &memory, &pressure, &load_average,
                                net_vector, temperatures_vector);
}

}  // namespace vantage::agent::samplers
