// Late DNS: the retry schedule's bounds and jitter, the background resolver's change reports
// (with an injected lookup, so no DNS server is involved), and a measurement whose target name
// resolves only after it started: reported unresolved (not lost) first, then probed, with its
// counters continuing when the name moves.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/measurement.hpp"
#include "agent/name_resolver.hpp"
#include "tests/support/eventually.hpp"

namespace {

namespace agent = vantage::agent;
using agent::LookupResult;
using agent::NameResolver;
using agent::NameState;
using agent::ResolveSchedule;
using namespace std::chrono_literals;

using vantage::test::eventually;

// A lookup whose answers the test sets per name, counting the calls.
class FakeDns {
 public:
  void set(const std::string& host, LookupResult r) {
    std::lock_guard lock(mutex_);
    answers_[host] = std::move(r);
  }
  NameResolver::Lookup lookup() {
    return [this](const std::string& host) {
      std::lock_guard lock(mutex_);
      ++calls_[host];
      const auto it = answers_.find(host);
      return it != answers_.end() ? it->second : LookupResult{std::nullopt, {}, "Name or service not known", true};
    };
  }
  int calls(const std::string& host) {
    std::lock_guard lock(mutex_);
    return calls_[host];
  }

 private:
  std::mutex mutex_;
  std::map<std::string, LookupResult> answers_;
  std::map<std::string, int> calls_;
};

LookupResult found(const char* address) {
  const auto a = asio::ip::make_address(address);
  return LookupResult{a, {a}, {}, true};
}

// Every change the resolver reported, in order.
struct Changes {
  std::mutex mutex;
  std::vector<std::pair<std::size_t, std::string>> seen;  // (index, address or "-")
  NameResolver::OnChange callback() {
    return [this](std::size_t i, const NameState& s) {
      std::lock_guard lock(mutex);
      seen.emplace_back(i, s.address ? s.address->to_string() : "-");
    };
  }
  std::vector<std::pair<std::size_t, std::string>> get() {
    std::lock_guard lock(mutex);
    return seen;
  }
};

}  // namespace

TEST_CASE("resolve schedule: exponential, bounded, jittered, never zero") {
  const ResolveSchedule s{.retry_initial = 1000ms, .retry_max = 60'000ms, .refresh = 300'000ms};
  std::uint64_t rng = 12345;
  // After n failures the delay is in [bound / 2, bound], bound = min(max, initial * 2^(n-1)).
  const std::int64_t bounds[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};
  for (std::uint32_t n = 1; n <= 9; ++n) {
    CAPTURE(n);
    const std::int64_t bound = bounds[n - 1];
    std::set<std::int64_t> drawn;
    for (int k = 0; k < 200; ++k) {
      const auto d = agent::next_lookup_delay(s, n, rng).count();
      CHECK(d >= bound / 2);
      CHECK(d <= bound);
      drawn.insert(d);
    }
    CHECK(drawn.size() > 20);  // jittered: agents that failed together retry apart
  }
  // A success waits for the refresh, jittered the same way.
  for (int k = 0; k < 100; ++k) {
    const auto d = agent::next_lookup_delay(s, 0, rng).count();
    CHECK(d >= 150'000);
    CHECK(d <= 300'000);
  }
  // Huge failure counts neither overflow nor exceed the bound.
  for (const std::uint32_t n : {40u, 63u, 64u, 1000u, 0xffffffffu}) {
    const auto d = agent::next_lookup_delay(s, n, rng).count();
    CHECK(d >= 30'000);
    CHECK(d <= 60'000);
  }
  // Degenerate settings still give a positive delay (no hot loop).
  const ResolveSchedule zero{.retry_initial = 0ms, .retry_max = 0ms, .refresh = 0ms};
  CHECK(agent::next_lookup_delay(zero, 1, rng).count() >= 0);
  CHECK(agent::next_lookup_delay(zero, 5, rng).count() <= 1);
  // A maximum below the initial delay caps it.
  const ResolveSchedule capped{.retry_initial = 5000ms, .retry_max = 2000ms, .refresh = 1000ms};
  CHECK(agent::next_lookup_delay(capped, 1, rng).count() <= 5000);
}

TEST_CASE("name resolver: reports each change once, retries failures with backoff, keeps an address on a transient failure") {
  FakeDns dns;
  dns.set("b.test", found("127.0.0.2"));
  Changes changes;
  NameResolver resolver({"a.test", "b.test"}, ResolveSchedule{.retry_initial = 20ms, .retry_max = 80ms, .refresh = 50ms},
                        changes.callback(), dns.lookup(), 7);
  resolver.start();
  // The first lookup of each name reports, found or not.
  REQUIRE(eventually([&] { return changes.get().size() >= 2; }));
  CHECK(resolver.state(0).looked_up);
  CHECK_FALSE(resolver.state(0).address);
  CHECK(resolver.state(0).error == "Name or service not known");
  CHECK(resolver.state(1).address == asio::ip::make_address("127.0.0.2"));
  // Failing on: retried (backoff capped at 80 ms), but no further change is reported.
  REQUIRE(eventually([&] { return dns.calls("a.test") >= 5; }));
  // Refreshed while resolved (every 25..50 ms), still without a report.
  REQUIRE(eventually([&] { return dns.calls("b.test") >= 3; }));
  CHECK(changes.get().size() == 2);

  // a resolves: reported once; b moves: reported once.
  dns.set("a.test", found("127.0.0.1"));
  dns.set("b.test", found("127.0.0.3"));
  REQUIRE(eventually([&] { return changes.get().size() >= 4; }));
  std::this_thread::sleep_for(200ms);  // several refreshes: nothing new to report
  auto seen = changes.get();
  REQUIRE(seen.size() == 4);
  std::multiset<std::pair<std::size_t, std::string>> expected{
      {0, "-"}, {1, "127.0.0.2"}, {0, "127.0.0.1"}, {1, "127.0.0.3"}};
  CHECK(std::multiset<std::pair<std::size_t, std::string>>(seen.begin(), seen.end()) == expected);

  // A server that does not answer says nothing about the name: a keeps its address.
  dns.set("a.test", LookupResult{std::nullopt, {}, "Temporary failure in name resolution", false});
  const int before = dns.calls("a.test");
  REQUIRE(eventually([&] { return dns.calls("a.test") >= before + 2; }));
  CHECK(resolver.state(0).address == asio::ip::make_address("127.0.0.1"));
  // The name is removed (NXDOMAIN): unresolved, reported once.
  dns.set("a.test", LookupResult{std::nullopt, {}, "Name or service not known", true});
  REQUIRE(eventually([&] { return changes.get().size() >= 5; }));
  CHECK(changes.get().back() == std::pair<std::size_t, std::string>{0, "-"});

  // refresh() looks a name up at once (a reload, a failed connect), not at its next due time.
  NameResolver slow({"c.test"}, ResolveSchedule{.retry_initial = 1h, .retry_max = 1h, .refresh = 1h},
                    [](std::size_t, const NameState&) {}, dns.lookup(), 9);
  slow.start();
  REQUIRE(eventually([&] { return dns.calls("c.test") == 1; }));
  slow.refresh(0);
  REQUIRE(eventually([&] { return dns.calls("c.test") == 2; }));
  slow.stop();

  resolver.stop();
  const std::size_t reported = changes.get().size();
  std::this_thread::sleep_for(150ms);
  CHECK(changes.get().size() == reported);  // nothing after stop()
}

TEST_CASE("name resolver: stop does not wait for a lookup that hangs") {
  // Shared with the detached lookup, which may outlive this test case.
  struct Flags {
    std::atomic<bool> release{false};
    std::atomic<int> calls{0};
    std::atomic<int> callbacks{0};
  };
  const auto flags = std::make_shared<Flags>();
  auto hanging = [flags](const std::string&) {
    ++flags->calls;
    while (!flags->release.load()) std::this_thread::sleep_for(5ms);
    return found("127.0.0.1");
  };
  {
    NameResolver resolver({"slow.test"}, ResolveSchedule{},
                          [flags](std::size_t, const NameState&) { ++flags->callbacks; }, hanging, 3);
    resolver.start();
    REQUIRE(eventually([&] { return flags->calls.load() == 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    resolver.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // not the lookup's duration (unbounded here)
  }
  flags->release = true;  // the detached lookup ends; its answer is dropped
  std::this_thread::sleep_for(100ms);
  CHECK(flags->callbacks.load() == 0);
}

TEST_CASE("pipeline: a target whose name resolves late is unresolved (not lost) first, then probed, and follows a move") {
  // A reflector on 127.0.0.1, port picked by the kernel; the target's name resolves to nothing
  // at first, then to 127.0.0.1, then moves to 127.0.0.2 (loopback too: nothing answers there
  // with this port, so its probes are lost: the counters continue across the move).
  agent::MeasurementConfig reflector;
  reflector.load_interval = 0s;
  reflector.reflector = agent::probes::ReflectorConfig{};
  reflector.reflector->bind_address = "127.0.0.1";
  reflector.reflector->port = 0;
  agent::Measurement answering(reflector);
  REQUIRE(answering.start([](agent::MeasurementReport&&) {}));
  const auto port = answering.reflector_endpoint()->port();

  FakeDns dns;
  agent::MeasurementConfig c;
  c.load_interval = 0s;
  c.report_interval = 200ms;
  c.resolve = ResolveSchedule{.retry_initial = 20ms, .retry_max = 50ms, .refresh = 50ms};
  c.lookup = dns.lookup();
  agent::ProbeTargetSpec t;
  t.protocol = agent::probes::ProbeProtocol::kUdpEcho;
  t.host = "pop2.test";
  t.port = port;
  t.rate_per_s = 50;
  t.timeout = 300ms;
  t.label = agent::target_label(t.protocol, t.host, t.port);
  c.targets.push_back(t);
  std::mutex mutex;
  std::vector<agent::MeasurementReport> reports;
  agent::Measurement m(c);
  REQUIRE(m.start([&](agent::MeasurementReport&& r) {
    std::lock_guard lock(mutex);
    reports.push_back(std::move(r));
  }));
  const auto count = [&] {
    std::lock_guard lock(mutex);
    return reports.size();
  };
  REQUIRE(eventually([&] { return count() >= 3; }));
  {
    std::lock_guard lock(mutex);
    for (const auto& r : reports) {
      REQUIRE(r.unresolved.size() == 1);
      CHECK(r.unresolved[0] == 1);
      CHECK(r.targets[0].sent == 0);
      CHECK(r.targets[0].lost == 0);
      CHECK(r.labels[0] == "pop2.test:" + std::to_string(port));
    }
  }
  dns.set("pop2.test", found("127.0.0.1"));
  std::uint64_t received = 0;
  REQUIRE(eventually([&] {
    std::lock_guard lock(mutex);
    received = 0;
    for (const auto& r : reports) received += r.targets[0].received;
    return received >= 20 && reports.back().unresolved[0] == 0;
  }));
  dns.set("pop2.test", found("127.0.0.2"));
  // After the move: probes go on (lost now), and unresolved stays 0.
  std::size_t mark = count();
  REQUIRE(eventually([&] {
    std::lock_guard lock(mutex);
    std::uint64_t lost = 0;
    for (std::size_t i = mark; i < reports.size(); ++i) lost += reports[i].targets[0].lost;
    return lost >= 10;
  }));
  m.finish();
  answering.stop();
  std::lock_guard lock(mutex);
  CHECK(reports.back().final);
  CHECK(reports.back().unresolved[0] == 0);
  // Sent counts add up across the whole run: one target, one continuous sequence.
  std::uint64_t sent = 0, got = 0, lost = 0;
  for (const auto& r : reports) {
    sent += r.targets[0].sent;
    got += r.targets[0].received;
    lost += r.targets[0].lost;
  }
  CHECK(sent == got + lost);
  CHECK(reports.back().counters.udp.sent == sent);
}

TEST_CASE("late dns: an answer that is no address to probe is named, and a usable one is not") {
  const auto why = [](const char* a) {
    const char* reason = agent::unprobeable_address(asio::ip::make_address(a));
    return std::string(reason != nullptr ? reason : "");
  };
  CHECK(why("0.0.0.0") == "the unspecified address");
  CHECK(why("::") == "the unspecified address");
  CHECK(why("::ffff:0.0.0.0") == "the unspecified address");
  CHECK(why("224.0.0.1") == "a multicast address");
  CHECK(why("ff02::1") == "a multicast address");
  CHECK(why("::ffff:239.1.2.3") == "a multicast address");
  CHECK(why("255.255.255.255") == "the broadcast address");
  for (const char* usable : {"127.0.0.1", "::1", "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "10.255.255.255"}) {
    CHECK_MESSAGE(why(usable).empty(), usable);
  }
}

TEST_CASE("pipeline: a name answered by a sinkhole (0.0.0.0) stays unresolved and is not probed until it resolves") {
  // A reflector on 127.0.0.1: probes sent to 0.0.0.0 would reach it (the kernel sends them to
  // this host), so any reply while the name answers 0.0.0.0 would show the sinkhole was probed.
  agent::MeasurementConfig reflector;
  reflector.load_interval = 0s;
  reflector.reflector = agent::probes::ReflectorConfig{};
  reflector.reflector->bind_address = "127.0.0.1";
  reflector.reflector->port = 0;
  agent::Measurement answering(reflector);
  REQUIRE(answering.start([](agent::MeasurementReport&&) {}));
  const auto port = answering.reflector_endpoint()->port();

  FakeDns dns;
  dns.set("pop3.test", found("0.0.0.0"));
  dns.set("mcast.test", found("ff02::1"));
  agent::MeasurementConfig c;
  c.load_interval = 0s;
  c.report_interval = 200ms;
  c.resolve = ResolveSchedule{.retry_initial = 20ms, .retry_max = 50ms, .refresh = 50ms};
  c.lookup = dns.lookup();
  agent::ProbeTargetSpec udp;
  udp.protocol = agent::probes::ProbeProtocol::kUdpEcho;
  udp.host = "pop3.test";
  udp.port = port;
  udp.rate_per_s = 50;
  udp.timeout = 300ms;
  udp.label = agent::target_label(udp.protocol, udp.host, udp.port);
  c.targets.push_back(udp);
  agent::ProbeTargetSpec tcp = udp;
  tcp.protocol = agent::probes::ProbeProtocol::kTcpConnect;
  tcp.host = "mcast.test";
  tcp.label = agent::target_label(tcp.protocol, tcp.host, tcp.port);
  c.targets.push_back(tcp);
  std::mutex mutex;
  std::vector<agent::MeasurementReport> reports;
  agent::Measurement m(c);
  REQUIRE(m.start([&](agent::MeasurementReport&& r) {
    std::lock_guard lock(mutex);
    reports.push_back(std::move(r));
  }));
  const auto count = [&] {
    std::lock_guard lock(mutex);
    return reports.size();
  };
  // Both names were looked up (and refreshed) while these reports were made.
  REQUIRE(eventually([&] { return count() >= 3 && dns.calls("pop3.test") >= 2 && dns.calls("mcast.test") >= 2; }));
  const std::size_t before = count();
  REQUIRE(eventually([&] { return count() >= before + 2; }));
  {
    std::lock_guard lock(mutex);
    for (const auto& r : reports) {
      REQUIRE(r.unresolved.size() == 2);
      CHECK(r.unresolved[0] == 1);
      CHECK(r.unresolved[1] == 1);
      CHECK(r.targets[0].sent == 0);
      CHECK(r.targets[0].received == 0);
      CHECK(r.targets[1].sent == 0);
    }
  }
  CHECK(m.unresolved_targets() == 2);
  dns.set("pop3.test", found("127.0.0.1"));
  REQUIRE(eventually([&] {
    std::lock_guard lock(mutex);
    std::uint64_t received = 0;
    for (const auto& r : reports) received += r.targets[0].received;
    return received >= 10 && reports.back().unresolved[0] == 0;
  }));
  m.finish();
  answering.stop();
  std::lock_guard lock(mutex);
  CHECK(reports.back().unresolved[0] == 0);
  CHECK(reports.back().unresolved[1] == 1);
  std::uint64_t tcp_sent = 0;
  for (const auto& r : reports) tcp_sent += r.targets[1].sent;
  CHECK(tcp_sent == 0);
}
