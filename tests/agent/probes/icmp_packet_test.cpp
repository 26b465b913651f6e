// ICMP echo packets (agent/probes/icmp_packet.hpp): 16-bit sequence unwrap, echo reply and
// ICMP error parsing, and rejection of foreign, malformed and truncated ones. No sockets.
#include "agent/probes/icmp_packet.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace {

namespace probes = vantage::agent::probes;
using probes::IcmpEchoReply;
using probes::IcmpParseStatus;
using Bytes = std::vector<std::byte>;

constexpr std::uint64_t kCookie = 0x0123456789abcdefu;

// Written independently of probes::internet_checksum, so a fault there cannot cancel out.
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

}  // namespace

TEST_CASE("icmp packet: the 16-bit wire sequence maps back onto the 64-bit counter across wraps") {
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

TEST_CASE("icmp packet: echo replies are parsed, and foreign or malformed ones rejected") {
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

namespace {

using probes::IcmpErrorReport;

// What a router sends back about one of our requests: an ICMP(v6) error of the given type,
// quoting the request's IP header and its first quote_len bytes (8 is all RFC 792 asks of
// IPv4 routers). IPv4 has the outer IP header in front as a raw socket delivers it.
Bytes icmp_error(bool ipv6, std::uint8_t type, std::uint8_t code, const Bytes& request, std::size_t quote_len,
                 std::uint8_t inner_protocol = 0) {
  Bytes b(8, std::byte{0});
  b[0] = std::byte{type};
  b[1] = std::byte{code};
  const std::size_t quoted = std::min(quote_len, request.size());
  if (ipv6) {
    Bytes ip(40, std::byte{0});
    ip[0] = std::byte{0x60};
    ip[4] = static_cast<std::byte>(request.size() >> 8);
    ip[5] = static_cast<std::byte>(request.size() & 0xff);
    ip[6] = std::byte{inner_protocol != 0 ? inner_protocol : std::uint8_t{58}};
    ip[7] = std::byte{64};
    ip[23] = std::byte{1};                                          // source ::1
    for (std::size_t i = 24; i < 40; ++i) ip[i] = std::byte{0x20};  // destination 2020:...
    b.insert(b.end(), ip.begin(), ip.end());
  } else {
    Bytes ip(20, std::byte{0});
    ip[0] = std::byte{0x45};
    ip[8] = std::byte{64};
    ip[9] = std::byte{inner_protocol != 0 ? inner_protocol : std::uint8_t{1}};
    ip[12] = std::byte{127};
    ip[15] = std::byte{1};
    ip[16] = std::byte{192};  // destination 192.0.2.33
    ip[18] = std::byte{2};
    ip[19] = std::byte{33};
    b.insert(b.end(), ip.begin(), ip.end());
  }
  b.insert(b.end(), request.begin(), request.begin() + static_cast<std::ptrdiff_t>(quoted));
  if (!ipv6) {
    const std::uint16_t sum = checksum(b, 0);
    b[2] = static_cast<std::byte>(sum >> 8);
    b[3] = static_cast<std::byte>(sum & 0xff);
    Bytes outer(20, std::byte{0});
    outer[0] = std::byte{0x45};
    outer[9] = std::byte{1};
    b.insert(b.begin(), outer.begin(), outer.end());
  }
  return b;
}

Bytes request(bool ipv6, std::uint16_t id, std::uint16_t seq, std::uint64_t cookie = kCookie) {
  Bytes b(probes::kIcmpHeaderSize + 56);
  REQUIRE(probes::encode_icmp_echo_request(b, ipv6, id, seq, cookie, 12345, 7, 56) == b.size());
  return b;
}

// After editing an error built by icmp_error(false, ...): redo its ICMP checksum.
void refresh_v4_checksum(Bytes& b) {
  b[22] = b[23] = std::byte{0};
  const std::uint16_t sum = checksum(Bytes(b.begin() + 20, b.end()), 0);
  b[22] = static_cast<std::byte>(sum >> 8);
  b[23] = static_cast<std::byte>(sum & 0xff);
}

IcmpParseStatus parse_error(const Bytes& b, bool ipv6, std::uint16_t id, IcmpErrorReport& out) {
  // An exact-size heap copy, so ASan flags any read past the received length.
  const std::vector<std::byte> exact(b.begin(), b.end());
  return probes::parse_icmp_error(exact, ipv6, !ipv6, id, kCookie, out);
}

}  // namespace

TEST_CASE("icmp packet: unreachable and time-exceeded errors quoting our requests are parsed") {
  struct Case {
    bool ipv6;
    std::uint8_t type;
    std::uint8_t code;
  };
  for (const Case c : {Case{false, 3, 1}, Case{false, 3, 13}, Case{false, 11, 0}, Case{true, 1, 3},
                       Case{true, 1, 4}, Case{true, 2, 0}, Case{true, 3, 0}}) {
    CAPTURE(c.ipv6);
    CAPTURE(int{c.type});
    IcmpErrorReport out;
    const Bytes full = icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x1234, 0xbeef), 1000);
    REQUIRE(parse_error(full, c.ipv6, 0x1234, out) == IcmpParseStatus::kOk);
    CHECK(out.type == c.type);
    CHECK(out.code == c.code);
    CHECK(out.id == 0x1234);
    CHECK(out.wire_seq == 0xbeef);
    CHECK(out.send_ns == 12345);
    CHECK(out.target == 7);
    if (c.ipv6) {
      CHECK(out.destination[0] == std::byte{0x20});
      CHECK(out.destination[15] == std::byte{0x20});
    } else {
      CHECK(out.destination[0] == std::byte{192});
      CHECK(out.destination[3] == std::byte{33});
    }
    CHECK(probes::is_icmp_error_for_probe(c.ipv6, c.type));

    // Exactly as much of the request as the cookie, send time and target need.
    const Bytes minimal = icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x1234, 1),
                                     probes::kIcmpHeaderSize + probes::kIcmpMinPayload);
    CHECK(parse_error(minimal, c.ipv6, 0x1234, out) == IcmpParseStatus::kOk);
    // An 8-byte quote names id and seq but cannot prove the request was ours.
    CHECK(parse_error(icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x1234, 1), 8), c.ipv6, 0x1234,
                      out) == IcmpParseStatus::kShortQuote);
    // Another process's ping (raw sockets see them all), and our id with a forged cookie.
    CHECK(parse_error(icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x4321, 1), 1000), c.ipv6, 0x1234,
                      out) == IcmpParseStatus::kWrongId);
    CHECK(parse_error(icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x1234, 1, kCookie ^ 0x100), 1000),
                      c.ipv6, 0x1234, out) == IcmpParseStatus::kWrongCookie);
    // An error about a UDP datagram, or quoting a reply rather than a request, is not ours.
    CHECK(parse_error(icmp_error(c.ipv6, c.type, c.code, request(c.ipv6, 0x1234, 1), 1000, 17), c.ipv6,
                      0x1234, out) == IcmpParseStatus::kNotIcmpError);
    CHECK(parse_error(icmp_error(c.ipv6, c.type, c.code, reply(c.ipv6, 0x1234, 1, kCookie), 1000), c.ipv6,
                      0x1234, out) == IcmpParseStatus::kNotIcmpError);

    // Every truncation of a valid error is rejected without reading past its end.
    for (std::size_t len = 0; len < minimal.size(); ++len) {
      const Bytes cut(minimal.begin(), minimal.begin() + static_cast<std::ptrdiff_t>(len));
      CHECK(parse_error(cut, c.ipv6, 0x1234, out) != IcmpParseStatus::kOk);
    }
  }

  IcmpErrorReport out;
  // Types that say nothing about the probe's fate: redirect, parameter problem, echo itself.
  for (const std::uint8_t type : {std::uint8_t{5}, std::uint8_t{12}, std::uint8_t{0}, std::uint8_t{8}}) {
    CHECK_FALSE(probes::is_icmp_error_for_probe(false, type));
    Bytes b = icmp_error(false, type, 0, request(false, 0x1234, 1), 1000);
    CHECK(parse_error(b, false, 0x1234, out) == IcmpParseStatus::kNotIcmpError);
  }
  for (const std::uint8_t type : {std::uint8_t{4}, std::uint8_t{128}, std::uint8_t{129}, std::uint8_t{137}}) {
    CHECK_FALSE(probes::is_icmp_error_for_probe(true, type));
    CHECK(parse_error(icmp_error(true, type, 0, request(true, 0x1234, 1), 1000), true, 0x1234, out) ==
          IcmpParseStatus::kNotIcmpError);
  }
  // IPv4 raw sockets hand over unchecked bytes: the error's checksum and both IP headers count.
  Bytes corrupted = icmp_error(false, 3, 1, request(false, 0x1234, 1), 1000);
  corrupted.back() ^= std::byte{0x01};
  CHECK(parse_error(corrupted, false, 0x1234, out) == IcmpParseStatus::kMalformed);
  Bytes bad_inner = icmp_error(false, 3, 1, request(false, 0x1234, 1), 10);
  bad_inner[28] = std::byte{0x4f};  // the quoted header claims 60 bytes, only 30 are quoted
  refresh_v4_checksum(bad_inner);
  CHECK(parse_error(bad_inner, false, 0x1234, out) == IcmpParseStatus::kMalformed);
  Bytes bad_v6 = icmp_error(true, 1, 0, request(true, 0x1234, 1), 1000);
  bad_v6[8] = std::byte{0x40};  // quoted header is not IPv6
  CHECK(parse_error(bad_v6, true, 0x1234, out) == IcmpParseStatus::kMalformed);

  // The error-queue form (ping sockets): only the quoted request, the id already matched.
  const Bytes quote = request(true, 0x9999, 77);
  REQUIRE(probes::parse_quoted_echo_request(quote, true, false, 0, kCookie, out) == IcmpParseStatus::kOk);
  CHECK(out.wire_seq == 77);
  CHECK(probes::parse_quoted_echo_request(Bytes(quote.begin(), quote.begin() + 8), true, false, 0, kCookie,
                                          out) == IcmpParseStatus::kShortQuote);
  CHECK(probes::parse_quoted_echo_request(Bytes(quote.begin(), quote.begin() + 7), true, false, 0, kCookie,
                                          out) == IcmpParseStatus::kTooShort);

  // Random bytes, and random damage to valid errors, never crash and random bytes never pass.
  std::mt19937 rng(7);
  for (int i = 0; i < 3000; ++i) {
    const bool ipv6 = (i & 1) != 0;
    Bytes junk(static_cast<std::size_t>(rng() % 160));
    for (auto& b : junk) {
      b = static_cast<std::byte>(rng());
    }
    CHECK(parse_error(junk, ipv6, 0x1234, out) != IcmpParseStatus::kOk);
    Bytes damaged = icmp_error(ipv6, ipv6 ? 1 : 3, 0, request(ipv6, 0x1234, 5), rng() % 100);
    damaged[rng() % damaged.size()] = static_cast<std::byte>(rng());
    damaged.resize(rng() % (damaged.size() + 1));
    (void)parse_error(damaged, ipv6, 0x1234, out);
  }
}


TEST_CASE("icmp packet: internet_checksum is RFC 1071's sum, odd lengths included") {
  std::mt19937 rng(3);
  for (std::size_t len = 0; len < 70; ++len) {
    Bytes b(len);
    for (auto& x : b) {
      x = static_cast<std::byte>(rng());
    }
    CAPTURE(len);
    CHECK(probes::internet_checksum(b) == checksum(b, 0));
  }
}
