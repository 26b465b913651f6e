// IcmpProber: wire-level units (16-bit sequence unwrap, echo reply parsing and rejection of
// foreign or malformed replies), socket selection and its error message through an injected
// opener, and real pings of 127.0.0.1 and ::1 over whichever socket kinds this host allows.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/probes/icmp_prober.hpp"
#include "agent/probes/probe_event.hpp"
#include "platform/spsc_ring.hpp"

namespace {

namespace probes = vantage::agent::probes;
using probes::IcmpEchoReply;
using probes::IcmpParseStatus;
using probes::IcmpProber;
using probes::IcmpProberConfig;
using probes::IcmpProberCounters;
using probes::IcmpSocketKind;
using probes::IcmpSocketMode;
using probes::IcmpTarget;
using probes::ProbeEvent;
using probes::ProbeEventKind;
using Ring = vantage::platform::SpscRing<ProbeEvent>;
using Bytes = std::vector<std::byte>;

constexpr std::uint64_t kCookie = 0x0123456789abcdefu;

std::uint16_t checksum(const Bytes& b, std::size_t from) {
  std::uint32_t sum = 0;
  for (std::size_t i = from; i < b.size(); i += 2) {
    const unsigned hi = std::to_integer<unsigned>(b[i]);
    const unsigned lo = i + 1 < b.size() ? std::to_integer<unsigned>(b[i + 1]) : 0;
    sum += (hi << 8) | lo;
  }
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<std::uint16_t>(~sum & 0xffff);
}

// An echo reply as a peer would send it: our request with the type flipped (and, for IPv4,
// the checksum redone), optionally behind a 20-byte IPv4 header as a raw socket delivers it.
Bytes reply(bool ipv6, std::uint16_t id, std::uint16_t seq, std::uint64_t cookie, bool ip_header = false,
            std::size_t payload = 32) {
  Bytes b(probes::kIcmpHeaderSize + payload);
  REQUIRE(probes::encode_icmp_echo_request(b, ipv6, id, seq, cookie, 12345, 7, payload) == b.size());
  b[0] = std::byte{static_cast<unsigned char>(ipv6 ? 129 : 0)};
  if (!ipv6) {
    b[2] = b[3] = std::byte{0};
    const std::uint16_t sum = checksum(b, 0);
    b[2] = static_cast<std::byte>(sum >> 8);
    b[3] = static_cast<std::byte>(sum & 0xff);
  }
  if (ip_header) {
    Bytes ip(20, std::byte{0});
    ip[0] = std::byte{0x45};
    ip[9] = std::byte{1};  // IPPROTO_ICMP
    b.insert(b.begin(), ip.begin(), ip.end());
  }
  return b;
}

IcmpParseStatus parse(const Bytes& b, bool ipv6, bool ip_header, bool check_id, std::uint16_t id,
                      IcmpEchoReply& out) {
  return probes::parse_icmp_echo_reply(b, ipv6, ip_header, check_id, id, kCookie, out);
}

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
  const probes::IcmpStartResult started = prober.start();
  REQUIRE_MESSAGE(started.ok(), started.message);
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
  ProbeEvent e;
  while (ring.try_pop(e)) {
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

TEST_CASE("IcmpProber: the 16-bit wire sequence maps back onto the 64-bit counter across wraps") {
  std::uint64_t seq = 0;
  CHECK_FALSE(probes::unwrap_icmp_sequence(0, 0, seq));  // nothing sent yet
  REQUIRE(probes::unwrap_icmp_sequence(1, 0, seq));
  CHECK(seq == 0);
  CHECK_FALSE(probes::unwrap_icmp_sequence(10, 20, seq));  // would predate the first probe
  // 70000 sent: the last is 69999, on the wire 69999 - 65536 = 4463.
  REQUIRE(probes::unwrap_icmp_sequence(70000, 4463, seq));
  CHECK(seq == 69999);
  REQUIRE(probes::unwrap_icmp_sequence(70000, 65535, seq));  // just before the wrap
  CHECK(seq == 65535);
  REQUIRE(probes::unwrap_icmp_sequence(70000, 0, seq));  // the wrap itself
  CHECK(seq == 65536);
  REQUIRE(probes::unwrap_icmp_sequence(70000, 5000, seq));  // a reply 64999 probes late
  CHECK(seq == 5000);
  // Near the top of the 64-bit counter.
  const std::uint64_t top = ~std::uint64_t{0};
  REQUIRE(probes::unwrap_icmp_sequence(top, static_cast<std::uint16_t>(top - 1), seq));
  CHECK(seq == top - 1);
  REQUIRE(probes::unwrap_icmp_sequence(top, static_cast<std::uint16_t>(top - 3), seq));
  CHECK(seq == top - 3);
  // Every wire value round-trips for the last 65536 probes.
  for (std::uint64_t s = 100000; s < 100000 + 65536; s += 97) {
    REQUIRE(probes::unwrap_icmp_sequence(100000 + 65536, static_cast<std::uint16_t>(s), seq));
    CHECK(seq == s);
  }
}

TEST_CASE("IcmpProber: echo replies are parsed, and foreign or malformed ones rejected") {
  IcmpEchoReply out;
  for (const bool ipv6 : {false, true}) {
    CAPTURE(ipv6);
    REQUIRE(parse(reply(ipv6, 0x1234, 0xfffe, kCookie), ipv6, false, true, 0x1234, out) ==
            IcmpParseStatus::kOk);
    CHECK(out.id == 0x1234);
    CHECK(out.wire_seq == 0xfffe);
    CHECK(out.send_ns == 12345);
    CHECK(out.target == 7);
    // Someone else's ping: a raw socket checks the id, a ping socket leaves that to the kernel.
    CHECK(parse(reply(ipv6, 0x4321, 1, kCookie), ipv6, false, true, 0x1234, out) ==
          IcmpParseStatus::kWrongId);
    CHECK(parse(reply(ipv6, 0x4321, 1, kCookie), ipv6, false, false, 0x1234, out) == IcmpParseStatus::kOk);
    // Right id, another prober's (or a forger's) cookie.
    CHECK(parse(reply(ipv6, 0x1234, 1, kCookie ^ 1), ipv6, false, true, 0x1234, out) ==
          IcmpParseStatus::kWrongCookie);
    // A request, or any other ICMP type, is not a reply.
    Bytes request(probes::kIcmpHeaderSize + 32);
    REQUIRE(probes::encode_icmp_echo_request(request, ipv6, 0x1234, 1, kCookie, 1, 0, 32) == request.size());
    CHECK(parse(request, ipv6, false, true, 0x1234, out) == IcmpParseStatus::kNotEchoReply);
    Bytes nonzero_code = reply(ipv6, 0x1234, 1, kCookie);
    nonzero_code[1] = std::byte{1};
    CHECK(parse(nonzero_code, ipv6, false, true, 0x1234, out) == IcmpParseStatus::kNotEchoReply);
    // Too short for a header, and our id but too short for our payload (ping(8) -s 0).
    CHECK(parse(Bytes(7), ipv6, false, true, 0x1234, out) == IcmpParseStatus::kTooShort);
    Bytes short_payload = reply(ipv6, 0x1234, 1, kCookie);
    short_payload.resize(probes::kIcmpHeaderSize + 10);
    CHECK(parse(short_payload, ipv6, false, true, 0x1234, out) == IcmpParseStatus::kTooShort);
  }
  // IPv4 raw sockets deliver the IP header: it is skipped, and the checksum is verified.
  CHECK(parse(reply(false, 9, 2, kCookie, true), false, true, true, 9, out) == IcmpParseStatus::kOk);
  CHECK(out.wire_seq == 2);
  Bytes corrupted = reply(false, 9, 2, kCookie, true);
  corrupted.back() ^= std::byte{0xff};
  CHECK(parse(corrupted, false, true, true, 9, out) == IcmpParseStatus::kMalformed);
  Bytes bad_ihl = reply(false, 9, 2, kCookie, true);
  bad_ihl[0] = std::byte{0x44};  // a 16-byte IPv4 header cannot exist
  CHECK(parse(bad_ihl, false, true, true, 9, out) == IcmpParseStatus::kMalformed);
  bad_ihl[0] = std::byte{0x4f};  // 60 bytes claimed, more than the 50 that arrived
  bad_ihl.resize(50);
  CHECK(parse(bad_ihl, false, true, true, 9, out) == IcmpParseStatus::kMalformed);
  Bytes not_icmp = reply(false, 9, 2, kCookie, true);
  not_icmp[9] = std::byte{17};
  CHECK(parse(not_icmp, false, true, true, 9, out) == IcmpParseStatus::kNotEchoReply);
  CHECK(parse(Bytes(19), false, true, true, 9, out) == IcmpParseStatus::kTooShort);

  // Random bytes of every small length never crash the parser and are never accepted.
  std::mt19937 rng(42);
  for (int i = 0; i < 2000; ++i) {
    Bytes junk(static_cast<std::size_t>(rng() % 120));
    for (auto& b : junk) {
      b = static_cast<std::byte>(rng());
    }
    for (const bool ipv6 : {false, true}) {
      CHECK(parse(junk, ipv6, !ipv6, true, 9, out) != IcmpParseStatus::kOk);
    }
  }
}

TEST_CASE("IcmpProber: socket selection and the one-line error when no kind is allowed") {
  asio::io_context io;
  Ring ring(16);
  auto start_with = [&](IcmpSocketMode mode, probes::IcmpSocketOpener opener) {
    IcmpProberConfig config;
    config.mode = mode;
    config.socket_opener = opener;
    config.targets = {target(0, "127.0.0.1")};
    IcmpProber prober(io, config, ring);
    const probes::IcmpStartResult result = prober.start();
    const IcmpSocketKind kind = prober.socket_kind(false);
    // Pending waits keep their handler memory in the prober: let them finish before it goes.
    prober.stop();
    io.run();
    io.restart();
    return std::pair{result, kind};
  };

  SUBCASE("auto with neither allowed names both remedies") {
    const auto [result, kind] = start_with(IcmpSocketMode::kAuto, refuse_all);
    CHECK_FALSE(result.ok());
    CHECK(result.message.find("ping_group_range") != std::string::npos);
    CHECK(result.message.find("CAP_NET_RAW") != std::string::npos);
    CHECK(result.message.find('\n') == std::string::npos);
    CHECK(kind == IcmpSocketKind::kNone);
    MESSAGE(result.message);
  }
  SUBCASE("forced dgram names ping_group_range only") {
    const auto [result, kind] = start_with(IcmpSocketMode::kDgram, refuse_all);
    CHECK_FALSE(result.ok());
    CHECK(result.message.find("ping_group_range") != std::string::npos);
    CHECK(result.message.find("CAP_NET_RAW") == std::string::npos);
  }
  SUBCASE("forced raw names CAP_NET_RAW only") {
    const auto [result, kind] = start_with(IcmpSocketMode::kRaw, refuse_all);
    CHECK_FALSE(result.ok());
    CHECK(result.message.find("CAP_NET_RAW") != std::string::npos);
    CHECK(result.message.find("ping_group_range") == std::string::npos);
  }
  SUBCASE("auto falls back to a raw socket when ping sockets are refused") {
    if (!socket_works(AF_INET, SOCK_RAW, IPPROTO_ICMP)) {
      MESSAGE("raw ICMP socket unavailable here: fallback not tested");
    } else {
      const auto [result, kind] = start_with(IcmpSocketMode::kAuto, refuse_dgram);
      CHECK(result.ok());
      CHECK(kind == IcmpSocketKind::kRaw);
    }
  }
  SUBCASE("auto prefers a ping socket, and forced dgram matches what this host allows") {
    const bool dgram = socket_works(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    const auto [result, kind] = start_with(IcmpSocketMode::kDgram, nullptr);
    CHECK(result.ok() == dgram);
    if (dgram) {
      CHECK(kind == IcmpSocketKind::kDgram);
      const auto [auto_result, auto_kind] = start_with(IcmpSocketMode::kAuto, nullptr);
      CHECK(auto_result.ok());
      CHECK(auto_kind == IcmpSocketKind::kDgram);
    } else {
      CHECK(result.message.find("ping_group_range") != std::string::npos);
    }
  }
  SUBCASE("an invalid config is rejected") {
    IcmpProberConfig config;
    config.targets = {target(0, "127.0.0.1")};
    config.targets[0].payload_size = probes::kIcmpMinPayload - 1;
    IcmpProber prober(io, config, ring);
    CHECK(prober.start().error == std::errc::invalid_argument);
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
