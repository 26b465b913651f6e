// TcpProber over real loopback sockets (127.0.0.1 and ::1): every connect to a listener is
// answered, a closed port is counted as refused, and a connect that hangs is cancelled at the
// target's timeout. Assertions are on counts and loose bounds, so they hold under QEMU and TSan.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "agent/probes/probe_event.hpp"
#include "agent/probes/tcp_prober.hpp"
#include "platform/spsc_ring.hpp"
#include "tests/agent/probes/event_ring.hpp"

namespace {

namespace probes = vantage::agent::probes;
using asio::ip::tcp;
using probes::ProbeEvent;
using probes::ProbeEventKind;
using probes::TcpProber;
using probes::TcpProberConfig;
using probes::TcpProberCounters;
using probes::TcpTarget;
using Ring = probes::test::EventRing;

// Accepts and immediately closes every connection, on the io_context it is given.
class Acceptor {
 public:
  Acceptor(asio::io_context& io, const std::string& address) : acceptor_(io), peer_(io) {
    const tcp::endpoint local(asio::ip::make_address(address), 0);
    acceptor_.open(local.protocol());
    acceptor_.bind(local);
    acceptor_.listen();
    accept();
  }
  tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  void close() {
    std::error_code ignored;
    acceptor_.close(ignored);
  }

 private:
  void accept() {
    acceptor_.async_accept(peer_, [this](const std::error_code& ec) {
      if (ec) {
        return;
      }
      std::error_code ignored;
      peer_.close(ignored);
      accept();
    });
  }
  tcp::acceptor acceptor_;
  tcp::socket peer_;
};

bool loopback_available(const std::string& address) {
  asio::io_context io;
  tcp::socket s(io);
  std::error_code ec;
  const tcp::endpoint local(asio::ip::make_address(address), 0);
  s.open(local.protocol(), ec);
  if (!ec) {
    s.bind(local, ec);
  }
  return !ec;
}

struct Run {
  std::vector<ProbeEvent> events;
  TcpProberCounters counters;
};

// Runs the prober until `done(counters)` holds (or 1.5 s pass), stops it and drains the ring.
template <typename Done>
Run run_prober(asio::io_context& io, TcpProberConfig config, Done done) {
  Ring ring(4096);
  TcpProber prober(io, std::move(config), ring);
  REQUIRE(prober.start());
  std::thread thread([&io] { io.run(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (!done(prober.counters()) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  prober.stop();
  thread.join();
  Run run;
  run.counters = prober.counters();
  run.events = probes::test::drain_events(ring);
  return run;
}

TcpTarget target(std::uint32_t id, const tcp::endpoint& endpoint, double rate = 100.0,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(1000)) {
  TcpTarget t;
  t.target = id;
  t.endpoint = endpoint;
  t.rate_per_s = rate;
  t.timeout = timeout;
  t.dscp = 46;  // EF: exercises IP_TOS / IPV6_TCLASS
  return t;
}

void check_connects(const std::string& address) {
  if (!loopback_available(address)) {
    MESSAGE("skipped: ", address, " is not available on this host");
    return;
  }
  // The listener runs on its own io_context and thread, as a peer host would.
  asio::io_context server_io;
  Acceptor acceptor(server_io, address);
  std::thread server([&server_io] { server_io.run(); });
  asio::io_context io;
  TcpProberConfig config;
  config.targets = {target(3, acceptor.endpoint()), target(7, acceptor.endpoint())};
  const Run run = run_prober(io, config, [](const TcpProberCounters& c) { return c.established >= 20; });
  asio::post(server_io, [&acceptor] { acceptor.close(); });
  server.join();

  std::map<std::pair<std::uint32_t, std::uint64_t>, std::int64_t> sent;
  std::size_t replies = 0;
  for (const ProbeEvent& e : run.events) {
    CHECK(e.protocol == probes::ProbeProtocol::kTcpConnect);
    CHECK((e.target == 3 || e.target == 7));
    if (e.kind == ProbeEventKind::kSent) {
      CHECK(sent.emplace(std::pair{e.target, e.seq}, e.send_ns).second);
    } else {
      REQUIRE(e.kind == ProbeEventKind::kReply);
      const auto it = sent.find({e.target, e.seq});
      REQUIRE(it != sent.end());  // a reply follows its kSent in the ring
      CHECK(e.send_ns == it->second);
      const std::int64_t rtt = e.receive_ns - e.send_ns;
      CHECK(rtt > 0);
      CHECK(rtt < 1'000'000'000);
      ++replies;
    }
  }
  CHECK(replies >= 20);
  CHECK(run.counters.established == replies);
  CHECK(run.counters.sent == sent.size());
  // Only connects still in flight when stop() ran may lack a reply.
  CHECK(sent.size() - replies <= 2);
  CHECK(run.counters.refused == 0);
  CHECK(run.counters.connect_errors == 0);
  CHECK(run.counters.ring_full == 0);
  // Sequence numbers are per target and start at 0.
  CHECK(sent.count({3, 0}) == 1);
  CHECK(sent.count({7, 0}) == 1);
}

}  // namespace

TEST_CASE("TcpProber: every connect to an IPv4 listener is established, with a sane RTT") {
  check_connects("127.0.0.1");
}

TEST_CASE("TcpProber: every connect to an IPv6 listener is established, with a sane RTT") {
  check_connects("::1");
}

TEST_CASE("TcpProber: a closed port is reported as kSendError and counted as refused") {
  asio::io_context io;
  // Bound but not listening: the port stays ours (no reuse race) and every SYN gets an RST.
  tcp::socket holder(io);
  holder.open(tcp::v4());
  holder.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  TcpProberConfig config;
  config.targets = {target(1, holder.local_endpoint())};
  const Run run = run_prober(io, config, [](const TcpProberCounters& c) { return c.refused >= 5; });
  std::size_t sent = 0, errors = 0;
  for (const ProbeEvent& e : run.events) {
    CHECK(e.kind != ProbeEventKind::kReply);
    sent += e.kind == ProbeEventKind::kSent;
    errors += e.kind == ProbeEventKind::kSendError;
  }
  CHECK(run.counters.refused >= 5);
  CHECK(errors == run.counters.refused);
  CHECK(sent == run.counters.sent);
  CHECK(sent - errors <= 2);
  CHECK(run.counters.established == 0);
}

TEST_CASE("TcpProber: a connect that neither completes nor fails is cancelled at the timeout") {
  // A listener that never accepts, with backlog 0: once its accept queue holds a connection,
  // Linux drops further SYNs, so later connects hang in SYN_SENT.
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  REQUIRE(::bind(listener, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(listener, 0) == 0);

  // Fill the queue: connect until one does not complete within 200 ms.
  std::vector<int> fillers;
  bool hanging = false;
  for (int i = 0; i < 8 && !hanging; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    fillers.push_back(fd);
    ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    pollfd pfd{fd, POLLOUT, 0};
    hanging = ::poll(&pfd, 1, 200) == 0;
  }
  if (!hanging) {
    MESSAGE("skipped: this kernel completes connects to a full backlog, so nothing hangs");
  } else {
    asio::io_context io;
    TcpProberConfig config;
    config.targets = {target(2, tcp::endpoint(asio::ip::address_v4::loopback(), ntohs(addr.sin_port)), 50.0,
                             std::chrono::milliseconds(50))};
    const Run run = run_prober(io, config, [](const TcpProberCounters& c) { return c.timeouts >= 3; });
    CHECK(run.counters.timeouts >= 3);
    CHECK(run.counters.established == 0);
    // Nothing is emitted for a timeout: the aggregator sees kSent without kReply as lost.
    for (const ProbeEvent& e : run.events) {
      CHECK(e.kind == ProbeEventKind::kSent);
    }
    // The slots were recycled: more connects started than a target has slots (50/s * 50 ms + 2).
    CHECK(run.counters.sent > 4);
  }
  for (const int fd : fillers) {
    ::close(fd);
  }
  ::close(listener);
}

TEST_CASE("TcpProber: an invalid config is rejected by start()") {
  asio::io_context io;
  Ring ring(8);
  const tcp::endpoint endpoint(asio::ip::address_v4::loopback(), 9);
  auto bad = [&](auto mutate) {
    TcpProberConfig config;
    config.targets = {target(0, endpoint)};
    mutate(config);
    TcpProber prober(io, config, ring);
    return prober.start().code() == vantage::platform::Errc::kInvalid;
  };
  CHECK(bad([](TcpProberConfig& c) { c.targets[0].rate_per_s = 0; }));
  CHECK(bad([](TcpProberConfig& c) { c.targets[0].dscp = 64; }));
  CHECK(bad([](TcpProberConfig& c) { c.targets[0].timeout = std::chrono::nanoseconds(0); }));
  CHECK(bad([](TcpProberConfig& c) { c.targets[0].endpoint.port(0); }));
  CHECK(bad([](TcpProberConfig& c) { c.jitter = 0.9; }));
}

TEST_CASE("TcpProber: a target without an address waits, starts once set_address gives it one, and keeps its seqs") {
  asio::io_context server_io;
  Acceptor acceptor(server_io, "127.0.0.1");
  std::thread server([&server_io] { server_io.run(); });
  asio::io_context io;
  Ring ring(4096);
  TcpProberConfig config;
  TcpTarget late = target(5, tcp::endpoint(asio::ip::address_v4::any(), acceptor.endpoint().port()));
  late.resolved = false;  // a name that has no address yet
  config.targets = {late};
  TcpProber prober(io, config, ring);
  REQUIRE(prober.start());
  // With nothing to probe the prober has no pending work: the guard keeps run() going, as the
  // agent's own does.
  auto work = asio::make_work_guard(io);
  std::thread thread([&io] { io.run(); });
  const auto wait_until = [&](auto done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done(prober.counters()) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done(prober.counters());
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // 20 probes' worth at 100/s
  CHECK(prober.counters().sent == 0);

  // Each change tells, on the prober's thread, whether the target is probed now.
  std::mutex verdicts_mutex;
  std::vector<bool> verdicts;
  const auto record = [&](bool probed) {
    std::lock_guard lock(verdicts_mutex);
    verdicts.push_back(probed);
  };
  prober.set_address(0, asio::ip::make_address("127.0.0.1"), record);
  CHECK(wait_until([](const TcpProberCounters& c) { return c.established >= 5; }));
  prober.set_address(0, std::nullopt, record);  // the name went away: probing pauses
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::uint64_t paused_at = prober.counters().sent;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(prober.counters().sent == paused_at);
  prober.set_address(0, asio::ip::make_address("127.0.0.1"), record);
  CHECK(wait_until([&](const TcpProberCounters& c) { return c.established >= paused_at + 5; }));
  {
    std::lock_guard lock(verdicts_mutex);
    CHECK(verdicts == std::vector<bool>{true, false, true});
  }

  prober.stop();
  work.reset();
  thread.join();
  asio::post(server_io, [&acceptor] { acceptor.close(); });
  server.join();
  // One continuous sequence for the target across the pause: 0, 1, 2, ... without repeats.
  std::vector<std::uint64_t> seqs;
  for (const ProbeEvent& e : probes::test::drain_events(ring)) {
    CHECK(e.target == 5);
    if (e.kind == ProbeEventKind::kSent) seqs.push_back(e.seq);
  }
  REQUIRE(seqs.size() == prober.counters().sent);
  for (std::size_t i = 0; i < seqs.size(); ++i) CHECK(seqs[i] == i);
}
