// IcmpProber: socket selection and its error message through an injected opener, real pings of 127.0.0.1 and ::1 over whichever socket kinds this host
// allows, and, in a private network namespace, injected ICMP errors and stop_sending().
#include <doctest/doctest.h>

#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/probes/icmp_prober.hpp"
#include "agent/probes/probe_event.hpp"
#include "platform/spsc_ring.hpp"
#include "tests/agent/probes/event_ring.hpp"

namespace {

namespace probes = vantage::agent::probes;
using probes::IcmpProber;
using probes::IcmpProberConfig;
using probes::IcmpProberCounters;
using probes::IcmpSocketKind;
using probes::IcmpSocketMode;
using probes::IcmpTarget;
using probes::ProbeEvent;
using probes::ProbeEventKind;
using probes::test::drain_events;
using Ring = probes::test::EventRing;
using Bytes = std::vector<std::byte>;

bool socket_works(int domain, int type, int protocol) {
  const int fd = ::socket(domain, type, protocol);
  if (fd < 0) {
    return false;
  }
  ::close(fd);
  return true;
}

int refuse_all(int, int, int) {
  errno = EACCES;
  return -1;
}

int refuse_dgram(int domain, int type, int protocol) {
  if ((type & SOCK_DGRAM) == SOCK_DGRAM && (type & SOCK_RAW) != SOCK_RAW) {
    errno = EACCES;
    return -1;
  }
  return ::socket(domain, type, protocol);
}

IcmpTarget target(std::uint32_t id, const char* address) {
  IcmpTarget t;
  t.target = id;
  t.address = asio::ip::make_address(address);
  t.rate_per_s = 100.0;
  t.payload_size = 64;
  t.dscp = 10;
  return t;
}

// A prober of the one target t at rate_per_s, through sockets of the given mode.
IcmpProberConfig paced(IcmpSocketMode mode, IcmpTarget t, double rate_per_s) {
  IcmpProberConfig config;
  config.mode = mode;
  t.rate_per_s = rate_per_s;
  config.targets = {t};
  return config;
}

bool echo_ignored(const char* sysctl) {
  std::ifstream in(sysctl);
  int value = 0;
  return (in >> value) && value != 0;
}

// Pings `address` with the given mode until 20 replies arrived (or 1.5 s passed) and checks
// that every request was answered with a matching seq and a sane RTT.
void check_ping(const char* address, IcmpSocketMode mode, bool kernel_timestamps) {
  const bool ipv6 = asio::ip::make_address(address).is_v6();
  asio::io_context io;
  Ring ring(4096);
  IcmpProberConfig config;
  config.mode = mode;
  config.kernel_timestamps = kernel_timestamps;
  config.targets = {target(5, address)};
  IcmpProber prober(io, config, ring);
  const vantage::platform::Status started = prober.start();
  REQUIRE_MESSAGE(started, started.message());
  CHECK(prober.socket_kind(ipv6) ==
        (mode == IcmpSocketMode::kRaw ? IcmpSocketKind::kRaw : IcmpSocketKind::kDgram));
  CHECK(prober.socket_kind(!ipv6) == IcmpSocketKind::kNone);
  if (!kernel_timestamps) {
    CHECK_FALSE(prober.kernel_timestamps(ipv6));
  } else if (!prober.kernel_timestamps(ipv6)) {
    MESSAGE("SO_TIMESTAMPNS refused (QEMU user mode?): user-space receive times only");
  }

  std::thread thread([&io] { io.run(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (prober.counters().replies < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  prober.stop();
  thread.join();
  const IcmpProberCounters c = prober.counters();

  std::map<std::uint64_t, std::int64_t> sent;
  std::size_t replies = 0;
  for (const ProbeEvent& e : drain_events(ring)) {
    CHECK(e.protocol == probes::ProbeProtocol::kIcmpEcho);
    CHECK(e.target == 5);
    if (e.kind == ProbeEventKind::kSent) {
      CHECK(sent.emplace(e.seq, e.send_ns).second);
      continue;
    }
    REQUIRE(e.kind == ProbeEventKind::kReply);
    const auto it = sent.find(e.seq);
    REQUIRE(it != sent.end());
    CHECK(e.send_ns == it->second);
    CHECK(e.receive_ns - e.send_ns > 0);
    CHECK(e.receive_ns - e.send_ns < 1'000'000'000);
    CHECK(e.kernel_rx_timestamp == prober.kernel_timestamps(ipv6));
    ++replies;
  }
  CHECK(replies >= 20);
  CHECK(c.replies == replies);
  CHECK(c.sent == sent.size());
  CHECK(sent.size() - replies <= 2);  // only probes in flight at stop() may be unanswered
  CHECK(sent.count(0) == 1);
  CHECK(c.send_errors == 0);
  CHECK(c.dropped_malformed == 0);
  CHECK(c.ring_full == 0);
}

void check_ping_all_modes(const char* address) {
  const bool ipv6 = asio::ip::make_address(address).is_v6();
  if (echo_ignored(ipv6 ? "/proc/sys/net/ipv6/icmp/echo_ignore_all"
                        : "/proc/sys/net/ipv4/icmp_echo_ignore_all")) {
    MESSAGE("skipped: this host ignores echo requests");
    return;
  }
  const int domain = ipv6 ? AF_INET6 : AF_INET;
  const int protocol = ipv6 ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP);
  if (socket_works(domain, SOCK_RAW, protocol)) {
    SUBCASE("raw socket, kernel timestamps where accepted") {
      check_ping(address, IcmpSocketMode::kRaw, true);
    }
    SUBCASE("raw socket, user-space timestamps") { check_ping(address, IcmpSocketMode::kRaw, false); }
  } else {
    MESSAGE("raw ICMP socket unavailable here (no CAP_NET_RAW, or QEMU): raw path not tested");
  }
  if (socket_works(domain, SOCK_DGRAM, protocol)) {
    SUBCASE("ping socket") { check_ping(address, IcmpSocketMode::kDgram, true); }
  } else {
    MESSAGE("ping socket unavailable here (net.ipv4.ping_group_range): unprivileged path not tested");
  }
}

}  // namespace

TEST_CASE("IcmpProber: socket selection and the one-line error when no kind is allowed") {
  asio::io_context io;
  Ring ring(16);
  auto start_with = [&](IcmpSocketMode mode, probes::IcmpSocketOpener opener) {
    IcmpProberConfig config;
    config.mode = mode;
    config.socket_opener = opener;
    config.targets = {target(0, "127.0.0.1")};
    IcmpProber prober(io, config, ring);
    const vantage::platform::Status result = prober.start();
    const IcmpSocketKind kind = prober.socket_kind(false);
    // Pending waits keep their handler memory in the prober: let them finish before it goes.
    prober.stop();
    io.run();
    io.restart();
    return std::pair{result, kind};
  };

  SUBCASE("auto with neither allowed names both remedies") {
    const auto [result, kind] = start_with(IcmpSocketMode::kAuto, refuse_all);
    CHECK_FALSE(result);
    CHECK(result.message().find("ping_group_range") != std::string::npos);
    CHECK(result.message().find("CAP_NET_RAW") != std::string::npos);
    CHECK(result.message().find('\n') == std::string::npos);
    CHECK(kind == IcmpSocketKind::kNone);
    MESSAGE(result.message());
  }
  SUBCASE("forced dgram names ping_group_range only") {
    const auto [result, kind] = start_with(IcmpSocketMode::kDgram, refuse_all);
    CHECK_FALSE(result);
    CHECK(result.message().find("ping_group_range") != std::string::npos);
    CHECK(result.message().find("CAP_NET_RAW") == std::string::npos);
  }
  SUBCASE("forced raw names CAP_NET_RAW only") {
    const auto [result, kind] = start_with(IcmpSocketMode::kRaw, refuse_all);
    CHECK_FALSE(result);
    CHECK(result.message().find("CAP_NET_RAW") != std::string::npos);
    CHECK(result.message().find("ping_group_range") == std::string::npos);
  }
  SUBCASE("auto falls back to a raw socket when ping sockets are refused") {
    if (!socket_works(AF_INET, SOCK_RAW, IPPROTO_ICMP)) {
      MESSAGE("raw ICMP socket unavailable here: fallback not tested");
    } else {
      const auto [result, kind] = start_with(IcmpSocketMode::kAuto, refuse_dgram);
      CHECK(result);
      CHECK(kind == IcmpSocketKind::kRaw);
    }
  }
  SUBCASE("auto prefers a ping socket, and forced dgram matches what this host allows") {
    const bool dgram = socket_works(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    const auto [result, kind] = start_with(IcmpSocketMode::kDgram, nullptr);
    CHECK(static_cast<bool>(result) == dgram);
    if (dgram) {
      CHECK(kind == IcmpSocketKind::kDgram);
      const auto [auto_result, auto_kind] = start_with(IcmpSocketMode::kAuto, nullptr);
      CHECK(auto_result);
      CHECK(auto_kind == IcmpSocketKind::kDgram);
    } else {
      CHECK(result.message().find("ping_group_range") != std::string::npos);
    }
  }
  SUBCASE("an invalid config is rejected") {
    IcmpProberConfig config;
    config.targets = {target(0, "127.0.0.1")};
    config.targets[0].payload_size = probes::kIcmpMinPayload - 1;
    IcmpProber prober(io, config, ring);
    CHECK(prober.start().code() == vantage::platform::Errc::kInvalid);
  }
}

TEST_CASE("IcmpProber: every echo request to 127.0.0.1 is answered") { check_ping_all_modes("127.0.0.1"); }

TEST_CASE("IcmpProber: every echo request to ::1 is answered") {
  if (!socket_works(AF_INET6, SOCK_DGRAM, 0)) {
    MESSAGE("skipped: no IPv6 on this host");
    return;
  }
  check_ping_all_modes("::1");
}

namespace {

// QEMU user mode (7.2) refuses SO_TIMESTAMPNS, which every Linux kernel accepts on UDP.
bool qemu_user_mode() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  const int on = 1;
  const bool refused = ::setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) != 0;
  ::close(fd);
  return refused;
}

bool write_sysctl(const char* path, const char* value) {
  std::ofstream out(path);
  out << value;
  out.flush();
  return out.good();
}

// Runs body on a thread of its own inside a fresh network namespace (only lo, brought up), so
// the sysctls it sets and the packets it injects never leave it, and no other process's ICMP
// reaches it; the namespace goes away with the thread. The kernel answers echo requests there
// only when kernel_echo says so (otherwise nothing does but the test). Returns false, running
// nothing, where namespaces are not allowed (no root).
bool in_private_netns(const std::function<void()>& body, bool kernel_echo = false) {
  bool entered = false;
  std::thread thread([&] {
    // unshare(CLONE_NEWNET) moves only the calling thread: the rest of the test process stays.
    if (::unshare(CLONE_NEWNET) != 0) {
      return;
    }
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    const bool up = fd >= 0 && ::ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags |= IFF_UP) != 0 &&
                    ::ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
    if (fd >= 0) {
      ::close(fd);
    }
    if (!up) {
      return;
    }
    // Both socket kinds are usable in here.
    write_sysctl("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    write_sysctl("/proc/sys/net/ipv4/icmp_echo_ignore_all", kernel_echo ? "0" : "1");
    write_sysctl("/proc/sys/net/ipv6/icmp/echo_ignore_all", kernel_echo ? "0" : "1");
    entered = true;
    try {
      body();
    } catch (...) {
      // A failed REQUIRE has been recorded already; it must not escape the thread.
    }
  });
  thread.join();
  return entered;
}

// A raw socket that sees the prober's echo requests on lo and can send anything back to it.
struct Peer {
  bool ipv6;
  int fd;

  explicit Peer(bool v6)
      : ipv6(v6),
        fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_RAW | SOCK_CLOEXEC,
                    v6 ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP))) {}
  ~Peer() {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // The next echo request (from its ICMP header on), or empty after timeout_ms.
  Bytes next_request(int timeout_ms) {
    Bytes b(2048);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) {
        continue;
      }
      const ssize_t n = ::recv(fd, b.data(), b.size(), 0);
      if (n <= 0) {
        continue;
      }
      std::size_t skip = 0;
      if (!ipv6) {
        skip = (std::to_integer<std::size_t>(b[0]) & 0x0f) * 4;
      }
      const auto size = static_cast<std::size_t>(n);
      if (size >= skip + probes::kIcmpHeaderSize &&
          std::to_integer<unsigned>(b[skip]) == (ipv6 ? 128u : 8u)) {
        // Sized, then copied: constructing from the offset iterators makes GCC 12 at -O3 warn
        // (-Wfree-nonheap-object, a false positive) when the copy is destroyed.
        Bytes request(size - skip);
        std::copy_n(b.begin() + static_cast<std::ptrdiff_t>(skip), request.size(), request.begin());
        return request;
      }
    }
    return {};
  }

  // Sends an ICMP message (from its header on) to the loopback address; the kernel adds the
  // IP header, and for ICMPv6 the checksum.
  bool send(const Bytes& icmp) {
    sockaddr_storage to{};
    socklen_t len = 0;
    if (ipv6) {
      sockaddr_in6 sin6{};
      sin6.sin6_family = AF_INET6;
      sin6.sin6_addr = in6addr_loopback;
      std::memcpy(&to, &sin6, sizeof(sin6));
      len = sizeof(sin6);
    } else {
      sockaddr_in sin{};
      sin.sin_family = AF_INET;
      sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      std::memcpy(&to, &sin, sizeof(sin));
      len = sizeof(sin);
    }
    return ::sendto(fd, icmp.data(), icmp.size(), 0, reinterpret_cast<const sockaddr*>(&to), len) ==
           static_cast<ssize_t>(icmp.size());
  }

  // What a router on the way would answer to request: an error quoting its IP header (built
  // here, as loopback saw it) and the whole request.
  Bytes error_for(const Bytes& request, std::uint8_t type, std::uint8_t code) const {
    Bytes b(8, std::byte{0});
    b[0] = std::byte{type};
    b[1] = std::byte{code};
    Bytes ip(ipv6 ? 40 : 20, std::byte{0});
    if (ipv6) {
      ip[0] = std::byte{0x60};
      ip[4] = static_cast<std::byte>(request.size() >> 8);
      ip[5] = static_cast<std::byte>(request.size() & 0xff);
      ip[6] = std::byte{58};
      ip[7] = std::byte{64};
      ip[23] = ip[39] = std::byte{1};  // ::1 -> ::1
    } else {
      ip[0] = std::byte{0x45};
      const std::size_t total = 20 + request.size();
      ip[2] = static_cast<std::byte>(total >> 8);
      ip[3] = static_cast<std::byte>(total & 0xff);
      ip[8] = std::byte{64};
      ip[9] = std::byte{1};
      ip[12] = ip[16] = std::byte{127};  // 127.0.0.1 -> 127.0.0.1
      ip[15] = ip[19] = std::byte{1};
      const std::uint16_t ip_sum = probes::internet_checksum(ip);
      ip[10] = static_cast<std::byte>(ip_sum >> 8);
      ip[11] = static_cast<std::byte>(ip_sum & 0xff);
    }
    b.insert(b.end(), ip.begin(), ip.end());
    b.insert(b.end(), request.begin(), request.end());
    if (!ipv6) {
      const std::uint16_t sum = probes::internet_checksum(b);
      b[2] = static_cast<std::byte>(sum >> 8);
      b[3] = static_cast<std::byte>(sum & 0xff);
    }
    return b;
  }

  // The echo reply the target would have sent.
  Bytes reply_for(const Bytes& request) const {
    Bytes b = request;
    b[0] = std::byte{static_cast<unsigned char>(ipv6 ? 129 : 0)};
    b[2] = b[3] = std::byte{0};
    if (!ipv6) {
      const std::uint16_t sum = probes::internet_checksum(b);
      b[2] = static_cast<std::byte>(sum >> 8);
      b[3] = static_cast<std::byte>(sum & 0xff);
    }
    return b;
  }
};

std::uint16_t wire_seq_of(const Bytes& request) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(request[6]) << 8) |
                                    std::to_integer<unsigned>(request[7]));
}

// In a private namespace: the prober pings the loopback address, nothing answers, and the test
// plays the router: it answers some requests with an ICMP error, and also sends errors that
// must not count (forged cookie, too short a quote, a seq never sent).
void check_icmp_errors(bool ipv6, IcmpSocketMode mode) {
  Peer peer(ipv6);
  REQUIRE(peer.fd >= 0);
  asio::io_context io;
  Ring ring(4096);
  IcmpProber prober(io, paced(mode, target(3, ipv6 ? "::1" : "127.0.0.1"), 50.0), ring);
  const vantage::platform::Status started = prober.start();
  REQUIRE_MESSAGE(started, started.message());
  std::thread thread([&io] { io.run(); });

  const std::uint8_t unreachable = ipv6 ? 1 : 3;
  const std::uint8_t time_exceeded = ipv6 ? 3 : 11;
  std::set<std::uint16_t> answered;
  std::size_t ignored = 0;
  for (int i = 0; i < 6; ++i) {
    const Bytes req = peer.next_request(1000);
    if (req.empty()) {
      break;
    }
    switch (i) {
      case 0:
      case 1:
      case 2: {
        // Codes: host unreachable, hop limit exceeded in transit, network/no route.
        CHECK(peer.send(peer.error_for(req, i == 1 ? time_exceeded : unreachable, i == 0 ? 1 : 0)));
        answered.insert(wire_seq_of(req));
        break;
      }
      case 3: {  // someone who guessed id and seq but not the cookie
        Bytes forged = req;
        forged[8] ^= std::byte{0x55};
        CHECK(peer.send(peer.error_for(forged, unreachable, 1)));
        ++ignored;
        break;
      }
      case 4: {  // a seq 1000 ahead of anything sent
        Bytes ahead = req;
        const auto seq = static_cast<std::uint16_t>(wire_seq_of(req) + 1000);
        ahead[6] = static_cast<std::byte>(seq >> 8);
        ahead[7] = static_cast<std::byte>(seq & 0xff);
        CHECK(peer.send(peer.error_for(ahead, unreachable, 1)));
        ++ignored;
        break;
      }
      default: {  // a router that quotes only the 8 bytes RFC 792 asks for
        Bytes b = peer.error_for(Bytes(req.begin(), req.begin() + 8), unreachable, 1);
        CHECK(peer.send(b));
        ++ignored;
        break;
      }
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (prober.counters().unreachable < answered.size() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // room for a wrong extra event
  prober.stop();
  thread.join();

  REQUIRE(answered.size() == 3);
  std::map<std::uint64_t, std::int64_t> sent;
  std::set<std::uint16_t> errors;
  for (const ProbeEvent& e : drain_events(ring)) {
    CHECK(e.target == 3);
    if (e.kind == ProbeEventKind::kSent) {
      sent.emplace(e.seq, e.send_ns);
    } else {
      REQUIRE(e.kind == ProbeEventKind::kSendError);
      const auto it = sent.find(e.seq);
      REQUIRE(it != sent.end());  // only ever for a probe that was sent
      CHECK(e.send_ns == it->second);
      CHECK(errors.insert(static_cast<std::uint16_t>(e.seq)).second);
    }
  }
  const IcmpProberCounters c = prober.counters();
  INFO("ipv6 " << ipv6 << ", raw " << (mode == IcmpSocketMode::kRaw) << ": " << errors.size()
               << " errors, unattributed " << c.unattributed_errors << ", foreign " << c.dropped_foreign
               << ", malformed " << c.dropped_malformed);
  CHECK(errors == answered);
  CHECK(c.unreachable == 3);
  CHECK(c.replies == 0);
  CHECK(c.send_errors == 0);
  CHECK(c.unattributed_errors + c.dropped_foreign == ignored);
  CHECK(c.receive_errors == 0);
}

}  // namespace

TEST_CASE("IcmpProber: ICMP errors about our requests close exactly those probes (private netns)") {
  for (const bool ipv6 : {false, true}) {
    for (const IcmpSocketMode mode : {IcmpSocketMode::kRaw, IcmpSocketMode::kDgram}) {
      CAPTURE(ipv6);
      CAPTURE(mode == IcmpSocketMode::kRaw);
      if (mode == IcmpSocketMode::kDgram && sizeof(void*) < 8 && qemu_user_mode()) {
        // QEMU 7.2's translation of the IP_RECVERR control message for 32-bit guests writes
        // outside the guest's buffer (heap corruption, seen only there: without the control
        // buffer the read is clean, and 64-bit guests and native ASan runs are clean).
        MESSAGE("ping-socket error queue not tested: 32-bit QEMU user mode mistranslates IP_RECVERR");
        continue;
      }
      if (!in_private_netns([&] { check_icmp_errors(ipv6, mode); })) {
        MESSAGE("skipped: cannot create a network namespace here (needs root)");
        return;
      }
    }
  }
}

TEST_CASE("IcmpProber: after stop_sending no probe is sent, and replies still arrive (private netns)") {
  for (const IcmpSocketMode mode : {IcmpSocketMode::kRaw, IcmpSocketMode::kDgram}) {
    CAPTURE(mode == IcmpSocketMode::kRaw);
    const bool ran = in_private_netns([&] {
      Peer peer(false);
      REQUIRE(peer.fd >= 0);
      asio::io_context io;
      Ring ring(4096);
      IcmpProber prober(io, paced(mode, target(1, "127.0.0.1"), 200.0), ring);
      const vantage::platform::Status started = prober.start();
      REQUIRE_MESSAGE(started, started.message());
      std::thread thread([&io] { io.run(); });

      // Let some probes go out unanswered, so they are in flight when sending stops.
      std::vector<Bytes> in_flight;
      while (in_flight.size() < 10) {
        Bytes req = peer.next_request(1000);
        REQUIRE(!req.empty());
        in_flight.push_back(std::move(req));
      }
      prober.stop_sending();
      prober.stop_sending();  // idempotent
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const std::uint64_t sent_after_stop = prober.counters().sent;
      // The rest of what went out before the stop took effect is in flight too.
      for (Bytes req = peer.next_request(50); !req.empty(); req = peer.next_request(50)) {
        in_flight.push_back(std::move(req));
      }
      CHECK(in_flight.size() == sent_after_stop);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // 40 probes at the old rate
      CHECK(prober.counters().sent == sent_after_stop);
      CHECK(peer.next_request(50).empty());

      for (const Bytes& req : in_flight) {
        CHECK(peer.send(peer.reply_for(req)));
      }
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
      while (prober.counters().replies < in_flight.size() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      prober.stop();
      prober.stop_sending();  // after stop: harmless
      thread.join();

      std::set<std::uint64_t> sent, replied;
      for (const ProbeEvent& e : drain_events(ring)) {
        if (e.kind == ProbeEventKind::kSent) {
          sent.insert(e.seq);
        } else if (e.kind == ProbeEventKind::kReply) {
          CHECK(sent.count(e.seq) == 1);
          replied.insert(e.seq);
        }
      }
      CHECK(sent.size() == sent_after_stop);
      CHECK(replied == sent);  // every probe in flight at the stop was still answered
      CHECK(prober.counters().sent == sent_after_stop);
    });
    if (!ran) {
      MESSAGE("skipped: cannot create a network namespace here (needs root)");
      return;
    }
  }
}

TEST_CASE("IcmpProber: a target resolved late is probed from then on, and a late IPv6 address opens its socket") {
  const bool v6 = socket_works(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6) || socket_works(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6);
  if (!socket_works(AF_INET, SOCK_RAW, IPPROTO_ICMP) && !socket_works(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)) {
    MESSAGE("skipped: no ICMP socket of either kind here");
    return;
  }
  if (echo_ignored("/proc/sys/net/ipv4/icmp_echo_ignore_all")) {
    MESSAGE("skipped: this host ignores echo requests");
    return;
  }
  asio::io_context io;
  Ring ring(4096);
  IcmpTarget late = target(9, "0.0.0.0");
  late.resolved = false;
  IcmpProber prober(io, paced(IcmpSocketMode::kAuto, late, 50.0), ring);
  const vantage::platform::Status started = prober.start();
  REQUIRE_MESSAGE(started, started.message());
  // An unresolved target opens the IPv4 socket at start (a missing permission shows there).
  CHECK(prober.socket_kind(false) != IcmpSocketKind::kNone);
  CHECK(prober.socket_kind(true) == IcmpSocketKind::kNone);
  auto work = asio::make_work_guard(io);
  std::thread thread([&io] { io.run(); });
  const auto wait_replies = [&](std::uint64_t n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (prober.counters().replies < n && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return prober.counters().replies >= n;
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(prober.counters().sent == 0);
  prober.set_address(0, asio::ip::make_address("127.0.0.1"));
  CHECK(wait_replies(5));
  // The unspecified address is none to probe (a sinkhole's answer): the prober says so, on its
  // own thread, and the target pauses until a usable one comes.
  std::atomic<int> verdict{-1};
  prober.set_address(0, asio::ip::make_address("::"), [&verdict](bool probed) { verdict = probed ? 1 : 0; });
  for (int i = 0; i < 2000 && verdict.load() == -1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(verdict.load() == 0);
  prober.set_address(0, asio::ip::make_address("127.0.0.1"), [&verdict](bool probed) { verdict = probed ? 1 : 0; });
  for (int i = 0; i < 2000 && verdict.load() != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(verdict.load() == 1);
  if (v6 && !echo_ignored("/proc/sys/net/ipv6/icmp/echo_ignore_all")) {
    const std::uint64_t before = prober.counters().replies;
    prober.set_address(0, asio::ip::make_address("::1"));
    CHECK(wait_replies(before + 5));
    CHECK(prober.socket_kind(true) != IcmpSocketKind::kNone);
  } else {
    MESSAGE("no IPv6 ICMP here: the late IPv6 socket is not tested");
  }
  prober.stop();
  work.reset();
  thread.join();
  std::uint64_t expected = 0;
  for (const ProbeEvent& e : drain_events(ring)) {
    CHECK(e.target == 9);
    if (e.kind == ProbeEventKind::kSent) CHECK(e.seq == expected++);  // one sequence across the move
  }
  CHECK(prober.counters().dropped_malformed == 0);
}

// Two pingers and the kernel's replies, nothing else: in a namespace of its own, since ICMP errors
// from other processes' traffic (a closed UDP port probed by a test running beside this one) reach
// every raw socket and are rightly read and dropped as foreign.
namespace {

void two_raw_pingers(bool isolated) {
  for (const char* address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    const bool ipv6 = asio::ip::make_address(address).is_v6();
    const int domain = ipv6 ? AF_INET6 : AF_INET;
    const int protocol = ipv6 ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP);
    if (!socket_works(domain, SOCK_RAW, protocol) ||
        echo_ignored(ipv6 ? "/proc/sys/net/ipv6/icmp/echo_ignore_all" : "/proc/sys/net/ipv4/icmp_echo_ignore_all")) {
      MESSAGE("raw ICMP socket or echo unavailable here: not tested");
      continue;
    }
    asio::io_context io;
    Ring ring_a(4096);
    Ring ring_b(4096);
    IcmpProber a(io, paced(IcmpSocketMode::kRaw, target(1, address), 50), ring_a);
    IcmpProber b(io, paced(IcmpSocketMode::kRaw, target(2, address), 50), ring_b);
    REQUIRE(a.start());
    REQUIRE(b.start());
    std::thread thread([&io] { io.run(); });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while ((a.counters().replies < 20 || b.counters().replies < 20) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    a.stop();
    b.stop();
    thread.join();
    const IcmpProberCounters ca = a.counters();
    const IcmpProberCounters cb = b.counters();
    CHECK(ca.replies >= 20);
    CHECK(cb.replies >= 20);
    // Without the kernel-side filter each would read (and drop as foreign) the other's replies;
    // a kernel that refuses the filter (QEMU) still drops them, so say which happened.
    if (ca.dropped_foreign + cb.dropped_foreign != 0) {
      MESSAGE("foreign ICMP read and dropped in user space: " << ca.dropped_foreign + cb.dropped_foreign
                                                              << (isolated ? " (socket filter not applied here)"
                                                                           : " (not isolated: maybe others' errors)"));
    }
#if !defined(__aarch64__) && !defined(__arm__)
    // Natively the kernel applies the filter.
    if (isolated) {
      CHECK(ca.dropped_foreign == 0);
      CHECK(cb.dropped_foreign == 0);
    }
#endif
  }
}

}  // namespace

TEST_CASE("IcmpProber: two raw-socket pingers on one host do not read each other's echo replies") {
  if (!in_private_netns([] { two_raw_pingers(true); }, true)) {
    MESSAGE("no private network namespace here: the filter's effect is not asserted");
    two_raw_pingers(false);
  }
}
