// /proc and /sys readers on committed trees: one captured on an x86_64 VM, one written for an
// arm64 board from the kernel's documented formats, and one damaged on purpose.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "platform/host_readers.hpp"

namespace {

using vantage::platform::HostReader;
using vantage::platform::ReadError;

const std::string kHosts = std::string(VANTAGE_FIXTURES_DIR) + "/hosts";

std::vector<std::string> messages(const std::vector<ReadError>& errors) {
  std::vector<std::string> out;
  for (const ReadError& e : errors) {
    out.push_back(e.to_string());
  }
  return out;
}

}  // namespace

TEST_CASE("x86_64 capture: proc/stat gives the total and both CPUs, guest columns dropped") {
  HostReader reader(kHosts + "/x86_64/t0");
  const auto stat = reader.read_proc_stat();
  CHECK(messages(stat.errors).empty());
  REQUIRE(stat.total);
  // cpu  553943 0 45765 305092 552 0 189 1028 0 0
  CHECK(*stat.total == vantage::platform::CpuTimes{-1, 553943, 0, 45765, 305092, 552, 0, 189, 1028});
  REQUIRE(stat.cpus.size() == 2);
  CHECK(stat.cpus[0] == vantage::platform::CpuTimes{0, 278722, 0, 22493, 151013, 443, 0, 67, 529});
  CHECK(stat.cpus[1] == vantage::platform::CpuTimes{1, 275220, 0, 23271, 154079, 108, 0, 121, 499});
}

TEST_CASE("x86_64 capture: meminfo in bytes, net/dev with ifindex, pressure, loadavg, no sensors") {
  HostReader reader(kHosts + "/x86_64/t0");

  const auto mem = reader.read_meminfo();
  CHECK(messages(mem.errors).empty());
  CHECK(mem.total_bytes == 24684092ull * 1024);
  CHECK(mem.available_bytes == 24263764ull * 1024);
  CHECK(mem.swap_total_bytes == 0u);
  CHECK(mem.swap_free_bytes == 0u);
  CHECK(mem.dirty_bytes == 412ull * 1024);

  const auto net = reader.read_net_dev();
  CHECK(messages(net.errors).empty());
  REQUIRE(net.interfaces.size() == 4);
  CHECK(net.interfaces[0].name == "lo");
  CHECK(net.interfaces[0].ifindex == 1);
  CHECK(net.interfaces[0].rx_bytes == 9683u);
  CHECK(net.interfaces[0].rx_packets == 37u);
  const auto& eth0 = net.interfaces[3];
  CHECK(eth0.name == "eth0");
  CHECK(eth0.ifindex == 4);
  CHECK(eth0.rx_bytes == 285266451u);
  CHECK(eth0.rx_packets == 7309u);
  CHECK(eth0.tx_bytes == 346758u);
  CHECK(eth0.tx_packets == 4884u);

  const auto psi = reader.read_pressure();
  CHECK(messages(psi.errors).empty());
  REQUIRE(psi.cpu.present);
  REQUIRE(psi.cpu.some);
  CHECK(psi.cpu.some->avg10 == doctest::Approx(0.14));
  CHECK(psi.cpu.some->avg300 == doctest::Approx(1.44));
  CHECK(psi.cpu.some->total_us == 847285993u);
  REQUIRE(psi.io.full);
  CHECK(psi.io.full->total_us == 4098175u);
  REQUIRE(psi.memory.full);
  CHECK(psi.memory.full->total_us == 0u);

  const auto load = reader.read_loadavg();
  CHECK(messages(load.errors).empty());
  CHECK(load.one == doctest::Approx(0.15));
  CHECK(load.five == doctest::Approx(0.80));
  CHECK(load.fifteen == doctest::Approx(1.27));

  // This VM has no thermal zones, hwmon or cpufreq: absent, not errors.
  const auto temps = reader.read_temperatures();
  CHECK(temps.readings.empty());
  CHECK(temps.errors.empty());
  const auto freqs = reader.read_cpu_frequencies();
  CHECK(freqs.cpus.empty());
  CHECK(freqs.errors.empty());

  CHECK(messages(reader.read_snapshot().errors).empty());
}

TEST_CASE("arm64 board: four CPUs, cpufreq, thermal zone, hwmon with and without labels") {
  HostReader reader(kHosts + "/arm64-board/t0");
  const auto snapshot = reader.read_snapshot();
  CHECK(messages(snapshot.errors).empty());

  REQUIRE(snapshot.stat.cpus.size() == 4);
  CHECK(snapshot.stat.cpus[3] ==
        vantage::platform::CpuTimes{3, 314120, 540, 102280, 7224110, 3810, 0, 3080, 0});
  REQUIRE(snapshot.stat.total);
  CHECK(snapshot.stat.total->idle == 28873440u);

  CHECK(snapshot.memory.total_bytes == 3885032ull * 1024);
  CHECK(snapshot.memory.swap_total_bytes == 102396ull * 1024);
  CHECK(snapshot.memory.dirty_bytes == 1284ull * 1024);

  REQUIRE(snapshot.net.interfaces.size() == 4);
  CHECK(snapshot.net.interfaces[1].name == "eth0");
  CHECK(snapshot.net.interfaces[1].rx_bytes == 4294967000u);
  CHECK(snapshot.net.interfaces[1].rx_errors == 2u);
  CHECK(snapshot.net.interfaces[1].rx_drops == 10u);
  CHECK(snapshot.net.interfaces[2].name == "wlan0");
  CHECK(snapshot.net.interfaces[2].ifindex == 3);
  CHECK(snapshot.net.interfaces[2].tx_drops == 1u);

  REQUIRE(snapshot.pressure.io.full);
  CHECK(snapshot.pressure.io.full->avg10 == doctest::Approx(2.75));
  CHECK(snapshot.pressure.io.full->total_us == 876543u);
  CHECK(snapshot.load_average.one == doctest::Approx(0.42));

  const auto& readings = snapshot.temperatures.readings;
  REQUIRE(readings.size() == 4);
  CHECK(readings[0].sensor == "thermal_zone0/cpu-thermal");
  CHECK(readings[0].celsius == doctest::Approx(48.5));
  CHECK(readings[1].sensor == "hwmon0/cpu_thermal/temp1");
  CHECK(readings[1].celsius == doctest::Approx(48.5));
  CHECK(readings[2].sensor == "hwmon1/nvme/Composite");
  CHECK(readings[2].celsius == doctest::Approx(41.85));
  CHECK(readings[3].sensor == "hwmon1/nvme/Sensor 1");
  CHECK(readings[3].celsius == doctest::Approx(39.85));

  REQUIRE(snapshot.frequencies.cpus.size() == 4);
  for (int cpu = 0; cpu < 4; ++cpu) {
    CHECK(snapshot.frequencies.cpus[static_cast<std::size_t>(cpu)].cpu == cpu);
    CHECK(snapshot.frequencies.cpus[static_cast<std::size_t>(cpu)].khz == 1500000u);
  }
}

TEST_CASE("broken tree: every bad field is named, the good ones around it are still read") {
  HostReader reader(kHosts + "/broken");
  const auto snapshot = reader.read_snapshot();

  const std::vector<std::string> expected{
      "proc/stat:3: cpu1.iowait: not a number ('12x')",
      "proc/stat:4: cpu2: too few columns (2, need at least 4)",
      "proc/stat:5: cpu3.user: out of range ('99999999999999999999')",
      "proc/stat:6: cpu4: too few columns (3, need at least 4)",
      "proc/meminfo: missing",
      "proc/net/dev:4: eth1: too few columns (6, need 16)",
      "proc/net/dev:5: eth2.rx_packets: not a number ('1o')",
      "proc/net/dev:6: no ':' after the interface name",
      "proc/pressure/cpu:1: some.avg10: not a number ('abc')",
      "proc/pressure/memory:1: some.avg300: missing",
      "proc/pressure/memory:1: some.total: missing",
      "proc/loadavg: empty",
      "sys/class/thermal/thermal_zone0/temp: temp: not a number ('abc')",
      "sys/class/hwmon/hwmon0/temp1_input: temp: out of range ('18446744073709551616')",
      "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq: scaling_cur_freq: not a number ('-5')",
      "sys/devices/system/cpu/cpu2/cpufreq/scaling_cur_freq: scaling_cur_freq: out of range ('5000000000')",
  };
  CHECK(messages(snapshot.errors) == expected);

  // The structured form carries the same facts for callers that count by file or field.
  REQUIRE(!snapshot.stat.errors.empty());
  CHECK(snapshot.stat.errors[0] == ReadError{"proc/stat", 3, "cpu1.iowait", "not a number ('12x')"});

  // Lines around the damage: the total, and cpu0 in the old seven-column format (no steal).
  REQUIRE(snapshot.stat.total);
  CHECK(snapshot.stat.total->steal == 7u);
  REQUIRE(snapshot.stat.cpus.size() == 1);
  CHECK(snapshot.stat.cpus[0] == vantage::platform::CpuTimes{0, 500, 10, 150, 2500, 20, 2, 3, 0});

  CHECK(!snapshot.memory.total_bytes);
  CHECK(!snapshot.memory.dirty_bytes);

  REQUIRE(snapshot.net.interfaces.size() == 1);
  CHECK(snapshot.net.interfaces[0].name == "eth0");
  CHECK(snapshot.net.interfaces[0].ifindex == 2);
  CHECK(snapshot.net.interfaces[0].tx_packets == 20u);

  CHECK(snapshot.pressure.cpu.present);
  CHECK(!snapshot.pressure.cpu.some);
  CHECK(!snapshot.pressure.memory.some);
  REQUIRE(snapshot.pressure.memory.full);
  CHECK(snapshot.pressure.memory.full->total_us == 5u);
  CHECK(!snapshot.pressure.io.present);  // absent file: no PSI for io, not an error

  CHECK(!snapshot.load_average.one);

  REQUIRE(snapshot.temperatures.readings.size() == 1);
  CHECK(snapshot.temperatures.readings[0].sensor == "thermal_zone1/gpu-thermal");
  CHECK(snapshot.temperatures.readings[0].celsius == doctest::Approx(41.0));

  REQUIRE(snapshot.frequencies.cpus.size() == 1);
  CHECK(snapshot.frequencies.cpus[0].khz == 1200000u);
}

TEST_CASE("a root with nothing in it: the required files are reported missing, the optional ones absent") {
  HostReader reader(kHosts + "/does-not-exist");
  const auto snapshot = reader.read_snapshot();
  const std::vector<std::string> expected{"proc/stat: missing", "proc/meminfo: missing",
                                          "proc/net/dev: missing", "proc/loadavg: missing"};
  CHECK(messages(snapshot.errors) == expected);
  CHECK(!snapshot.pressure.cpu.present);
  CHECK(!snapshot.pressure.memory.present);
  CHECK(!snapshot.pressure.io.present);
}

TEST_CASE("the live root reads without errors") {
  HostReader reader("/");
  const auto snapshot = reader.read_snapshot();
  // Sensors and cpufreq vary by machine and may fail transiently; the /proc files may not.
  CHECK(messages(snapshot.stat.errors).empty());
  CHECK(messages(snapshot.memory.errors).empty());
  CHECK(messages(snapshot.net.errors).empty());
  CHECK(messages(snapshot.pressure.errors).empty());
  CHECK(messages(snapshot.load_average.errors).empty());
  REQUIRE(snapshot.stat.total);
  CHECK(!snapshot.stat.cpus.empty());
  REQUIRE(snapshot.memory.total_bytes);
  CHECK(*snapshot.memory.total_bytes > 0u);
  CHECK(!snapshot.net.interfaces.empty());
}
