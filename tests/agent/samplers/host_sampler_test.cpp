// Host-load sampler: ratios and rates between two committed snapshots checked against deltas
// worked out by hand, counter wraps and resets, interface renames, damaged input, the wire form.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/samplers/host_sampler.hpp"
#include "platform/arch.hpp"

namespace {

using vantage::agent::samplers::counter_delta;
using vantage::agent::samplers::CpuUsage;
using vantage::agent::samplers::HostLoad;
using vantage::agent::samplers::HostSampler;
using vantage::platform::HostReader;
using vantage::platform::HostSnapshot;
using vantage::platform::ReadError;

const std::string kHosts = std::string(VANTAGE_FIXTURES_DIR) + "/hosts";
constexpr std::int64_t kSecond = 1'000'000'000;

HostSnapshot snapshot_of(const std::string& tree) { return HostReader(kHosts + "/" + tree).read_snapshot(); }

std::vector<std::string> messages(std::span<const ReadError> errors) {
  std::vector<std::string> out;
  for (const ReadError& e : errors) {
    out.push_back(e.to_string());
  }
  return out;
}

double ratio_sum(const CpuUsage& c) {
  return c.user + c.system + c.iowait + c.steal + c.irq + c.softirq + c.idle;
}

const vantage::agent::samplers::NetInterface* find_net(const HostLoad& load, const std::string& name) {
  for (const auto& iface : load.net) {
    if (iface.name == name) {
      return &iface;
    }
  }
  return nullptr;
}

vantage::platform::NetDevCounters iface(const char* name, std::int64_t ifindex, std::uint64_t rx_bytes) {
  vantage::platform::NetDevCounters c;
  c.name = name;
  c.ifindex = ifindex;
  c.rx_bytes = rx_bytes;
  return c;
}

}  // namespace

TEST_CASE("counter_delta: forward, 32-bit and 64-bit wraps, resets") {
  CHECK(counter_delta(10, 25).delta == 15u);
  CHECK(counter_delta(10, 10).valid);
  // 32-bit wrap: 4294967000 -> 2^32 -> 1000 is 296 + 1000.
  CHECK(counter_delta(4294967000u, 1000).valid);
  CHECK(counter_delta(4294967000u, 1000).delta == 1296u);
  // 64-bit wrap.
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  CHECK(counter_delta(kMax - 9, 5).valid);
  CHECK(counter_delta(kMax - 9, 5).delta == 15u);
  // Resets: small to smaller would be a wrap of nearly 2^32 (or 2^64), which is not believed.
  CHECK(!counter_delta(1000, 10).valid);
  CHECK(!counter_delta(5'000'000'000u, 100).valid);
  // A 32-bit counter past half its range dropping to small is read as a wrap (the ambiguous case).
  CHECK(counter_delta(3'000'000'000u, 5).delta == 4294967296u - 3'000'000'000u + 5);
}

TEST_CASE("x86_64 capture: ratios and rates over the captured second") {
  HostSampler sampler(kHosts + "/x86_64/t0");
  CHECK(sampler.sample(snapshot_of("x86_64/t0"), 0) == nullptr);
  CHECK(messages(sampler.errors()).empty());
  const HostLoad* load = sampler.sample(snapshot_of("x86_64/t1"), kSecond);
  REQUIRE(load != nullptr);
  CHECK(messages(sampler.errors()).empty());
  CHECK(load->interval_ns == kSecond);

  // Total: user +2, system +3, idle +204, steal +4 = 213 ticks.
  REQUIRE(load->cpus.size() == 3);
  const CpuUsage& total = load->cpus[0];
  CHECK(total.cpu == -1);
  CHECK(total.user == doctest::Approx(2.0 / 213));
  CHECK(total.system == doctest::Approx(3.0 / 213));
  CHECK(total.idle == doctest::Approx(204.0 / 213));
  CHECK(total.steal == doctest::Approx(4.0 / 213));
  CHECK(total.iowait == 0.0);
  CHECK(total.freq_khz == 0u);
  // cpu0: user +2, system +2, idle +101, steal +1.
  CHECK(load->cpus[1].cpu == 0);
  CHECK(load->cpus[1].idle == doctest::Approx(101.0 / 106));
  CHECK(load->cpus[2].cpu == 1);
  CHECK(load->cpus[2].steal == doctest::Approx(2.0 / 107));
  for (const CpuUsage& cpu : load->cpus) {
    CHECK(ratio_sum(cpu) == doctest::Approx(1.0));
  }

  CHECK(load->memory.total_bytes == 24684092ull * 1024);
  CHECK(load->memory.available_bytes == 24261800ull * 1024);
  CHECK(load->memory.dirty_bytes == 424ull * 1024);
  CHECK(load->pressure.cpu_some_avg10 == doctest::Approx(0.12));
  CHECK(load->pressure.io_full_avg10 == 0.0);
  CHECK(load->load_average.one == doctest::Approx(0.15));

  REQUIRE(load->net.size() == 4);
  const auto* lo = find_net(*load, "lo");
  REQUIRE(lo != nullptr);
  CHECK(lo->rates.rx_bytes_per_s == doctest::Approx(174895 - 9683));
  CHECK(lo->rates.tx_packets_per_s == doctest::Approx(243 - 37));
  const auto* eth0 = find_net(*load, "eth0");
  REQUIRE(eth0 != nullptr);
  CHECK(eth0->ifindex == 4);
  CHECK(eth0->rates.rx_bytes_per_s == 0.0);
  CHECK(load->temperatures.empty());
}

TEST_CASE("arm64 board: per-CPU ratios with frequencies, a 32-bit wrap, a rename and a replugged device") {
  HostSampler sampler(kHosts + "/arm64-board/t0");
  CHECK(sampler.sample(snapshot_of("arm64-board/t0"), 5 * kSecond) == nullptr);
  // Two seconds, so every rate is half the counter delta.
  const HostLoad* load = sampler.sample(snapshot_of("arm64-board/t1"), 7 * kSecond);
  REQUIRE(load != nullptr);
  CHECK(messages(sampler.errors()).empty());

  REQUIRE(load->cpus.size() == 5);
  const CpuUsage& total = load->cpus[0];
  CHECK(total.user == doctest::Approx(85.0 / 400));  // user +80 and nice +5
  CHECK(total.system == doctest::Approx(38.0 / 400));
  CHECK(total.idle == doctest::Approx(266.0 / 400));
  CHECK(total.iowait == doctest::Approx(5.0 / 400));
  CHECK(total.softirq == doctest::Approx(6.0 / 400));
  CHECK(total.irq == 0.0);
  const CpuUsage& cpu0 = load->cpus[1];
  CHECK(cpu0.cpu == 0);
  CHECK(cpu0.user == doctest::Approx(0.25));
  CHECK(cpu0.system == doctest::Approx(0.10));
  CHECK(cpu0.idle == doctest::Approx(0.60));
  CHECK(cpu0.iowait == doctest::Approx(0.02));
  CHECK(cpu0.softirq == doctest::Approx(0.03));
  CHECK(load->cpus[2].user == doctest::Approx(0.15));  // cpu1: user +10, nice +5
  for (std::size_t i = 1; i < load->cpus.size(); ++i) {
    CHECK(load->cpus[i].cpu == static_cast<std::int32_t>(i - 1));
    CHECK(load->cpus[i].freq_khz == 600000u);
  }
  for (const CpuUsage& cpu : load->cpus) {
    CHECK(ratio_sum(cpu) == doctest::Approx(1.0));
  }

  CHECK(load->memory.available_bytes == 3010120ull * 1024);
  CHECK(load->memory.swap_free_bytes == 102396ull * 1024);
  CHECK(load->pressure.cpu_some_avg10 == doctest::Approx(1.40));
  CHECK(load->pressure.memory_some_avg10 == 0.0);
  CHECK(load->pressure.memory_full_avg10 == 0.0);
  CHECK(load->pressure.io_some_avg10 == doctest::Approx(3.60));
  CHECK(load->pressure.io_full_avg10 == doctest::Approx(2.80));
  CHECK(load->load_average.one == doctest::Approx(0.47));
  CHECK(load->load_average.five == doctest::Approx(0.38));
  CHECK(load->load_average.fifteen == doctest::Approx(0.30));

  // usb0 came back with a new ifindex: its counters start afresh, so it has no rate yet.
  REQUIRE(load->net.size() == 3);
  CHECK(find_net(*load, "usb0") == nullptr);
  const auto* eth0 = find_net(*load, "eth0");
  REQUIRE(eth0 != nullptr);
  CHECK(eth0->rates.rx_bytes_per_s == doctest::Approx(1296.0 / 2));  // 4294967000 wrapped to 1000
  CHECK(eth0->rates.rx_packets_per_s == doctest::Approx(500.0));
  CHECK(eth0->rates.rx_errors_per_s == doctest::Approx(0.5));
  CHECK(eth0->rates.rx_drops_per_s == doctest::Approx(1.0));
  CHECK(eth0->rates.tx_bytes_per_s == doctest::Approx(125000.0));
  CHECK(eth0->rates.tx_packets_per_s == doctest::Approx(400.0));
  // wlan0 was renamed uplink0 (ifindex 3 in both): one interface, reported under its new name.
  CHECK(find_net(*load, "wlan0") == nullptr);
  const auto* uplink = find_net(*load, "uplink0");
  REQUIRE(uplink != nullptr);
  CHECK(uplink->ifindex == 3);
  CHECK(uplink->rates.rx_bytes_per_s == doctest::Approx(62500.0));
  CHECK(uplink->rates.rx_packets_per_s == doctest::Approx(50.0));
  CHECK(uplink->rates.rx_drops_per_s == doctest::Approx(0.5));
  CHECK(uplink->rates.tx_bytes_per_s == doctest::Approx(32000.0));
  CHECK(uplink->rates.tx_drops_per_s == 0.0);

  REQUIRE(load->temperatures.size() == 4);
  CHECK(load->temperatures[0].sensor == "thermal_zone0/cpu-thermal");
  CHECK(load->temperatures[0].celsius == doctest::Approx(49.2));
  CHECK(load->temperatures[2].sensor == "hwmon1/nvme/Composite");
  CHECK(load->temperatures[2].celsius == doctest::Approx(42.85));
}

TEST_CASE("a counter reset skips that interface for one interval, then it resumes") {
  HostSnapshot s0;
  s0.net.interfaces = {iface("eth0", 2, 1'000'000), iface("eth1", 3, 500)};
  HostSnapshot s1;
  s1.net.interfaces = {iface("eth0", 2, 40), iface("eth1", 3, 700)};
  HostSnapshot s2;
  s2.net.interfaces = {iface("eth0", 2, 1040), iface("eth1", 3, 900)};

  HostSampler sampler(kHosts + "/does-not-exist");
  CHECK(sampler.sample(s0, 0) == nullptr);
  const HostLoad* load = sampler.sample(s1, kSecond);
  REQUIRE(load != nullptr);
  REQUIRE(load->net.size() == 1);
  CHECK(load->net[0].name == "eth1");
  CHECK(load->net[0].rates.rx_bytes_per_s == doctest::Approx(200.0));
  CHECK(messages(sampler.errors()) ==
        std::vector<std::string>{"proc/net/dev: eth0.rx_bytes: went backwards (counter reset?); interface "
                                 "skipped for this interval"});

  load = sampler.sample(s2, 2 * kSecond);
  REQUIRE(load != nullptr);
  REQUIRE(load->net.size() == 2);
  CHECK(load->net[0].rates.rx_bytes_per_s == doctest::Approx(1000.0));
  CHECK(sampler.errors().empty());
}

TEST_CASE("without sysfs interfaces are matched by name, and a name taken by a new ifindex starts fresh") {
  HostSnapshot s0;
  s0.net.interfaces = {iface("eth0", -1, 100), iface("veth1", 7, 100)};
  HostSnapshot s1;
  s1.net.interfaces = {iface("eth0", -1, 300), iface("veth1", 9, 5000)};
  HostSampler sampler(kHosts + "/does-not-exist");
  CHECK(sampler.sample(s0, 0) == nullptr);
  const HostLoad* load = sampler.sample(s1, kSecond);
  REQUIRE(load != nullptr);
  REQUIRE(load->net.size() == 1);
  CHECK(load->net[0].name == "eth0");
  CHECK(load->net[0].rates.rx_bytes_per_s == doctest::Approx(200.0));
  CHECK(sampler.errors().empty());
}

TEST_CASE("CPU counters going backwards, iowait dips, zero ticks and a stalled clock") {
  using vantage::platform::CpuTimes;
  HostSnapshot s0;
  s0.stat.total = CpuTimes{-1, 200, 0, 100, 1000, 50, 0, 0, 0};
  s0.stat.cpus = {CpuTimes{0, 100, 0, 50, 500, 30, 0, 0, 0}, CpuTimes{1, 100, 0, 50, 500, 20, 0, 0, 0},
                  CpuTimes{2, 7, 0, 7, 7, 7, 0, 0, 0}};
  HostSnapshot s1;
  // cpu0: iowait fell 30 -> 25 (documented kernel behaviour): counted as 0, not an error.
  // cpu1: user fell (hotplug reset): skipped. cpu2: no ticks at all: skipped. cpu3: new, no baseline.
  s1.stat.total = CpuTimes{-1, 260, 0, 110, 1080, 50, 0, 0, 0};
  s1.stat.cpus = {CpuTimes{0, 150, 0, 60, 540, 25, 0, 0, 0}, CpuTimes{1, 10, 0, 50, 540, 20, 0, 0, 0},
                  CpuTimes{2, 7, 0, 7, 7, 7, 0, 0, 0}, CpuTimes{3, 1, 0, 1, 1, 1, 0, 0, 0}};
  s1.frequencies.cpus = {{3, 900000}, {0, 1800000}};

  HostSampler sampler(kHosts + "/does-not-exist");
  CHECK(sampler.sample(s0, kSecond) == nullptr);
  CHECK(sampler.sample(s0, kSecond) == nullptr);  // clock did not advance: no interval, baseline kept
  CHECK(messages(sampler.errors()) ==
        std::vector<std::string>{"clock: did not advance since the previous sample"});

  const HostLoad* load = sampler.sample(s1, 2 * kSecond);
  REQUIRE(load != nullptr);
  REQUIRE(load->cpus.size() == 2);
  CHECK(load->cpus[0].cpu == -1);
  CHECK(load->cpus[0].user == doctest::Approx(60.0 / 150));
  CHECK(load->cpus[1].cpu == 0);
  CHECK(load->cpus[1].iowait == 0.0);
  CHECK(load->cpus[1].user == doctest::Approx(0.5));  // 50 of 100 ticks
  CHECK(load->cpus[1].freq_khz == 1800000u);
  CHECK(ratio_sum(load->cpus[1]) == doctest::Approx(1.0));
  CHECK(messages(sampler.errors()) ==
        std::vector<std::string>{
            "proc/stat: cpu1.user: went backwards (CPU hotplug?); CPU skipped for this interval",
            "proc/stat: cpu2: no ticks elapsed; CPU skipped for this interval",
        });
}

TEST_CASE("broken tree: sampling it twice reports, marks what is missing, and does not crash") {
  HostSampler sampler(kHosts + "/broken");
  CHECK(sampler.sample(0) == nullptr);
  const std::vector<std::string> read_errors = messages(sampler.errors());
  CHECK(read_errors.size() == 16);
  const HostLoad* load = sampler.sample(kSecond);
  REQUIRE(load != nullptr);

  // The same tree twice: identical counters, so no CPU has ticks to divide.
  std::vector<std::string> expected = read_errors;
  expected.push_back("proc/stat: cpu: no ticks elapsed; CPU skipped for this interval");
  expected.push_back("proc/stat: cpu0: no ticks elapsed; CPU skipped for this interval");
  CHECK(messages(sampler.errors()) == expected);
  CHECK(load->cpus.empty());

  CHECK(load->memory.total_bytes == 0u);
  CHECK(load->pressure.cpu_some_avg10 == vantage::agent::samplers::Pressure::kAbsent);
  CHECK(load->pressure.memory_some_avg10 == vantage::agent::samplers::Pressure::kAbsent);
  CHECK(load->pressure.memory_full_avg10 == 0.0);
  CHECK(load->pressure.io_some_avg10 == vantage::agent::samplers::Pressure::kAbsent);
  CHECK(load->load_average.one == vantage::agent::samplers::LoadAverage::kAbsent);
  REQUIRE(load->net.size() == 1);
  CHECK(load->net[0].name == "eth0");
  CHECK(load->net[0].rates.rx_bytes_per_s == 0.0);
  REQUIRE(load->temperatures.size() == 1);
  CHECK(load->temperatures[0].celsius == doctest::Approx(41.0));
}

TEST_CASE("build_load_sample writes a LoadSample that verifies and carries the load") {
  HostSampler sampler(kHosts + "/arm64-board/t0");
  CHECK(sampler.sample(snapshot_of("arm64-board/t0"), 0) == nullptr);
  const HostLoad* load = sampler.sample(snapshot_of("arm64-board/t1"), kSecond);
  REQUIRE(load != nullptr);

  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(vantage::agent::samplers::build_load_sample(fbb, *load, 1'790'000'000'000'000'000));
  flatbuffers::Verifier verifier(fbb.GetBufferPointer(), fbb.GetSize());
  REQUIRE(verifier.VerifyBuffer<vantage::wire::LoadSample>(nullptr));

  const auto* sample = flatbuffers::GetRoot<vantage::wire::LoadSample>(fbb.GetBufferPointer());
  CHECK(sample->time_ns() == 1'790'000'000'000'000'000);
  REQUIRE(sample->arch() != nullptr);
  CHECK(sample->arch()->string_view() == vantage::platform::kArchName);
  REQUIRE(sample->cpus() != nullptr);
  REQUIRE(sample->cpus()->size() == 5);
  CHECK(sample->cpus()->Get(0)->cpu() == -1);
  CHECK(sample->cpus()->Get(1)->user() == doctest::Approx(0.25));
  CHECK(sample->cpus()->Get(1)->freq_khz() == 600000u);
  REQUIRE(sample->memory() != nullptr);
  CHECK(sample->memory()->total_bytes() == 3885032ull * 1024);
  REQUIRE(sample->pressure() != nullptr);
  CHECK(sample->pressure()->io_full_avg10() == doctest::Approx(2.80));
  REQUIRE(sample->load_average() != nullptr);
  CHECK(sample->load_average()->five() == doctest::Approx(0.38));
  REQUIRE(sample->net() != nullptr);
  REQUIRE(sample->net()->size() == 3);
  CHECK(sample->net()->Get(1)->name()->string_view() == "eth0");
  CHECK(sample->net()->Get(1)->rates()->rx_bytes_per_s() == doctest::Approx(1296.0));
  REQUIRE(sample->temperatures() != nullptr);
  REQUIRE(sample->temperatures()->size() == 4);
  CHECK(sample->temperatures()->Get(3)->sensor()->string_view() == "hwmon1/nvme/Sensor 1");
  CHECK(sample->temperatures()->Get(3)->celsius() == doctest::Approx(39.85));
}

TEST_CASE("the live root, sampled twice") {
  const auto now = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  HostSampler sampler("/");
  CHECK(sampler.sample(now()) == nullptr);
  // Long enough for every CPU to accrue a few 10 ms ticks, idle ones included.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const HostLoad* load = sampler.sample(now());
  REQUIRE(load != nullptr);
  // Sensors may fail transiently on some machines; what /proc says must read cleanly.
  for (const ReadError& e : sampler.errors()) {
    CHECK_MESSAGE(e.file.rfind("proc/", 0) != 0, e.to_string());
  }
  REQUIRE(!load->cpus.empty());
  CHECK(load->cpus[0].cpu == -1);
  CHECK(ratio_sum(load->cpus[0]) == doctest::Approx(1.0));
  CHECK(load->memory.total_bytes > 0u);
  CHECK(load->memory.available_bytes <= load->memory.total_bytes);
  CHECK(!load->net.empty());
}
