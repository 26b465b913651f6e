// STAMP session-reflector over real loopback sockets: 200 concurrent sessions with their own
// reflector sequence numbers, stateless mode, authenticated mode with the right and a wrong key,
// short packets, reply length, rate limiting, Class of Service and unknown TLVs, Sender TTL,
// the Error Estimate from the clock state and PTP timestamps. Assertions are on counts and
// contents, never on timing.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "agent/probes/stamp_packet.hpp"
#include "agent/probes/stamp_reflector.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "platform/cmsg.hpp"
#include "tests/agent/probes/started_on_thread.hpp"

namespace {

namespace probes = vantage::agent::probes;
namespace stamp = probes::stamp;
namespace platform = vantage::platform;
using Bytes = std::vector<std::byte>;

constexpr int kReplyTimeoutMs = 10'000;  // reached only when something is already wrong

class RunningStamp {
 public:
  explicit RunningStamp(probes::StampReflectorConfig config) : reflector_(io_, std::move(config)) {}
  probes::StampReflector* operator->() { return &reflector_; }
  std::uint16_t port() const { return reflector_.local_endpoint().port(); }

  // Counters once `received` datagrams were read and handled (or after a long timeout).
  probes::StampReflectorCounters counters_after(std::uint64_t received) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      const probes::StampReflectorCounters c = reflector_.counters();
      const std::uint64_t handled = c.replied + c.dropped_short + c.dropped_malformed + c.dropped_auth +
                                    c.dropped_rate_limited + c.send_errors;
      if ((c.received >= received && handled >= received) || std::chrono::steady_clock::now() >= deadline) {
        return c;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

 private:
  asio::io_context io_;
  probes::StampReflector reflector_;
  probes::test::StartedOnThread<probes::StampReflector> started_{io_, reflector_};
};

probes::StampReflectorConfig loopback_config() {
  probes::StampReflectorConfig c;
  c.bind_address = "::";
  c.port = 0;
  c.rate_limit = {.rate_per_s = 1'000'000, .burst = 1'000'000};
  return c;
}

// A plain IPv4 or IPv6 UDP socket on loopback that also reads the TOS of what it receives.
class Sender {
 public:
  explicit Sender(bool v6 = false) : v6_(v6) {
    fd_ = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    REQUIRE(fd_ >= 0);
    const int one = 1;
    if (v6) {
      (void)::setsockopt(fd_, IPPROTO_IPV6, IPV6_RECVTCLASS, &one, sizeof(one));
    } else {
      (void)::setsockopt(fd_, IPPROTO_IP, IP_RECVTOS, &one, sizeof(one));
    }
  }
  ~Sender() { ::close(fd_); }
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;

  void set_tos(int tos) {
    REQUIRE(v6_ ? ::setsockopt(fd_, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos)) == 0
                : ::setsockopt(fd_, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) == 0);
  }
  void set_ttl(int ttl) {
    REQUIRE(v6_ ? ::setsockopt(fd_, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &ttl, sizeof(ttl)) == 0
                : ::setsockopt(fd_, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)) == 0);
  }

  // IPv4 only: sends from address:port (host order) from now on.
  void bind_to(std::uint32_t address, std::uint16_t port) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(address);
    local.sin_port = htons(port);
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&local), sizeof(local)) == 0);
  }

  void send(const Bytes& packet, std::uint16_t port) {
    ssize_t n = -1;
    if (v6_) {
      sockaddr_in6 to{};
      to.sin6_family = AF_INET6;
      to.sin6_addr = in6addr_loopback;
      to.sin6_port = htons(port);
      n = ::sendto(fd_, packet.data(), packet.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof(to));
    } else {
      sockaddr_in to{};
      to.sin_family = AF_INET;
      to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      to.sin_port = htons(port);
      n = ::sendto(fd_, packet.data(), packet.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof(to));
    }
    REQUIRE(n == static_cast<ssize_t>(packet.size()));
  }

  // The next datagram, or nothing within timeout_ms; `tos` gets its TOS / traffic class.
  std::optional<Bytes> receive(int timeout_ms = kReplyTimeoutMs, int* tos = nullptr) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) != 1) {
      return std::nullopt;
    }
    Bytes buf(70'000);
    iovec iov{buf.data(), buf.size()};
    alignas(std::max_align_t) unsigned char control[128];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = ::recvmsg(fd_, &msg, 0);
    REQUIRE(n >= 0);
    buf.resize(static_cast<std::size_t>(n));
    if (tos != nullptr) {
      *tos = -1;
      platform::for_each_cmsg(msg, [tos](const cmsghdr& c) {
        int v = 0;
        unsigned char b = 0;
        if (platform::read_cmsg(c, IPPROTO_IPV6, IPV6_TCLASS, v)) {
          *tos = v;
        } else if (platform::read_cmsg(c, IPPROTO_IP, IP_TOS, b)) {
          *tos = b;
        }
      });
    }
    return buf;
  }

 private:
  bool v6_ = false;
  int fd_ = -1;
};

Bytes request(stamp::Mode mode, std::uint32_t seq, std::uint16_t ssid, std::size_t size = 0) {
  Bytes p(size == 0 ? stamp::base_size(mode) : size, std::byte{0});
  stamp::SenderPacket s;
  s.seq = seq;
  s.ssid = ssid;
  s.timestamp = stamp::ntp_from_realtime_ns(platform::realtime_ns());
  s.error_estimate = 0x0001;
  REQUIRE(stamp::encode_sender(p, mode, s));
  return p;
}

Bytes key_bytes(int first) {
  Bytes k;
  for (int i = 0; i < 32; ++i) k.push_back(static_cast<std::byte>(first + i));
  return k;
}

stamp::ReflectorPacket reply_of(const Bytes& b, stamp::Mode mode = stamp::Mode::kUnauthenticated) {
  stamp::ReflectorPacket r;
  REQUIRE(stamp::decode_reflector(b, mode, r));
  return r;
}

}  // namespace

TEST_CASE("stamp reflector: 200 concurrent sessions, stateful sequence numbers per session") {
  RunningStamp reflector(loopback_config());
  constexpr int kSenders = 200;
  constexpr int kRounds = 3;
  constexpr int kChunk = 50;  // bounded in flight: the test must not overflow socket buffers
  std::vector<std::unique_ptr<Sender>> senders;
  for (int i = 0; i < kSenders; ++i) senders.push_back(std::make_unique<Sender>(i % 2 == 1));
  for (int round = 0; round < kRounds; ++round) {
    for (int start = 0; start < kSenders; start += kChunk) {
      for (int i = start; i < start + kChunk; ++i) {
        // The sender's sequence numbers differ from the reflector's on purpose.
        const auto size = static_cast<std::size_t>(44 + 4 * (i % 5));
        senders[static_cast<std::size_t>(i)]->send(
            request(stamp::Mode::kUnauthenticated, static_cast<std::uint32_t>(1000 + round * 7 + i),
                    static_cast<std::uint16_t>(i + 1), size),
            reflector.port());
      }
      for (int i = start; i < start + kChunk; ++i) {
        const auto reply = senders[static_cast<std::size_t>(i)]->receive();
        REQUIRE(reply.has_value());
        CHECK(reply->size() == static_cast<std::size_t>(44 + 4 * (i % 5)));
        const stamp::ReflectorPacket r = reply_of(*reply);
        CHECK(r.seq == static_cast<std::uint32_t>(round));
        CHECK(r.sender_seq == static_cast<std::uint32_t>(1000 + round * 7 + i));
        CHECK(r.ssid == static_cast<std::uint16_t>(i + 1));
        CHECK(r.sender_error_estimate == 0x0001);
      }
    }
  }
  const probes::StampReflectorCounters c = reflector.counters_after(kSenders * kRounds);
  CHECK(c.received == kSenders * kRounds);
  CHECK(c.replied == kSenders * kRounds);
}

TEST_CASE("stamp reflector: a new SSID on the same socket is a new session") {
  RunningStamp reflector(loopback_config());
  Sender s;
  for (std::uint16_t ssid : {7, 7, 8, 7}) {
    s.send(request(stamp::Mode::kUnauthenticated, 50, ssid), reflector.port());
  }
  std::vector<std::uint32_t> seqs;
  for (int i = 0; i < 4; ++i) {
    const auto reply = s.receive();
    REQUIRE(reply.has_value());
    seqs.push_back(reply_of(*reply).seq);
  }
  CHECK(seqs == std::vector<std::uint32_t>{0, 1, 0, 2});
}

TEST_CASE("stamp reflector: stateless mode echoes the sender's sequence number") {
  probes::StampReflectorConfig config = loopback_config();
  config.stateful = false;
  RunningStamp reflector(config);
  Sender s;
  for (std::uint32_t seq : {5U, 9U, 0xfffffffeU}) {
    s.send(request(stamp::Mode::kUnauthenticated, seq, 3), reflector.port());
    const auto reply = s.receive();
    REQUIRE(reply.has_value());
    CHECK(reply_of(*reply).seq == seq);
    CHECK(reply_of(*reply).sender_seq == seq);
  }
}

TEST_CASE("stamp reflector: short, oversized and unauthorised packets are dropped and counted") {
  probes::StampReflectorConfig config = loopback_config();
  config.max_packet_size = 200;
  config.unauthenticated = false;
  config.keys.push_back({.peers = {*probes::AddressPrefix::parse("127.0.0.0/8")}, .key = key_bytes(1)});
  RunningStamp reflector(config);
  Sender v4;
  Sender v6(true);
  v4.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());    // 44 < 112: short
  v4.send(Bytes(201, std::byte{0}), reflector.port());                         // over max size
  v6.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());    // ::1 has no key
  v6.send(request(stamp::Mode::kAuthenticated, 1, 1), reflector.port());      // nor this
  const probes::StampReflectorCounters c = reflector.counters_after(4);
  CHECK(c.dropped_short == 1);
  CHECK(c.dropped_malformed == 1);
  CHECK(c.dropped_auth == 2);
  CHECK(c.replied == 0);
  CHECK_FALSE(v4.receive(100).has_value());
  CHECK_FALSE(v6.receive(100).has_value());

  // Unauthenticated service shorter than the 41-octet TWAMP-Light layout gets nothing; 41..43
  // octets (a TWAMP-Light sender padded to the reflector's size, RFC 5357 §4.1.2) are answered
  // in that layout, at the request's length.
  RunningStamp open(loopback_config());
  v6.send(Bytes(40, std::byte{0}), open.port());
  CHECK(open.counters_after(1).dropped_short == 1);
  CHECK_FALSE(v6.receive(100).has_value());
  for (const std::size_t size : {41u, 43u}) {
    Bytes light = request(stamp::Mode::kUnauthenticated, 77, 0);
    light.resize(size);
    v6.send(light, open.port());
    const auto reply = v6.receive();
    REQUIRE(reply.has_value());
    CHECK(reply->size() == size);
    Bytes padded = *reply;
    padded.resize(stamp::kUnauthenticatedSize);
    const stamp::ReflectorPacket r = reply_of(padded, stamp::Mode::kUnauthenticated);
    CHECK(r.sender_seq == 77);
    CHECK(r.ssid == 0);
    CHECK(r.sender_ttl != 0);
  }
}

TEST_CASE("stamp reflector: a request from its own port is not answered (two reflectors never loop)") {
  probes::StampReflectorConfig config = loopback_config();
  config.bind_address = "127.0.0.1";
  RunningStamp reflector(config);
  // What a spoofed request makes another reflector on the same port send: from that port.
  Sender looped;
  looped.bind_to(INADDR_LOOPBACK + 1, reflector.port());  // 127.0.0.2, the reflector's port
  looped.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());
  Sender plain;
  plain.send(request(stamp::Mode::kUnauthenticated, 2, 1), reflector.port());
  const probes::StampReflectorCounters c = reflector.counters_after(2);
  CHECK(c.dropped_malformed == 1);
  CHECK(c.replied == 1);
  CHECK(plain.receive().has_value());
  CHECK_FALSE(looped.receive(100).has_value());
}

TEST_CASE("stamp reflector: authenticated mode with the right and a wrong key") {
  probes::StampReflectorConfig config = loopback_config();
  config.keys.push_back({.peers = {*probes::AddressPrefix::parse("::1")}, .key = key_bytes(1)});
  RunningStamp reflector(config);
  Sender s(true);
  Bytes good = request(stamp::Mode::kAuthenticated, 11, 0x0102, 140);
  // A TLV after the base, covered by nothing but returned as it came.
  REQUIRE(stamp::encode_tlv_header(std::span(good).subspan(112), stamp::kTlvFlagU, stamp::kTlvExtraPadding, 24));
  REQUIRE(stamp::sign(good, key_bytes(1)));
  s.send(good, reflector.port());
  const auto reply = s.receive();
  REQUIRE(reply.has_value());
  CHECK(reply->size() == 140);
  CHECK(stamp::verify_hmac(*reply, key_bytes(1)));
  const stamp::ReflectorPacket r = reply_of(*reply, stamp::Mode::kAuthenticated);
  CHECK(r.seq == 0);
  CHECK(r.sender_seq == 11);
  CHECK(r.ssid == 0x0102);
  // Authenticated: TLVs return as they came (nothing covers them without the HMAC TLV).
  CHECK(static_cast<std::uint8_t>((*reply)[112]) == stamp::kTlvFlagU);

  Bytes bad = request(stamp::Mode::kAuthenticated, 12, 0x0102);
  REQUIRE(stamp::sign(bad, key_bytes(2)));
  s.send(bad, reflector.port());
  Bytes unsigned_packet = request(stamp::Mode::kAuthenticated, 13, 0x0102);
  s.send(unsigned_packet, reflector.port());
  const probes::StampReflectorCounters c = reflector.counters_after(3);
  CHECK(c.replied == 1);
  CHECK(c.replied_authenticated == 1);
  CHECK(c.dropped_auth == 2);
  CHECK_FALSE(s.receive(100).has_value());

  // Sources without a key still get unauthenticated service (unauthenticated = true).
  Sender v4;
  v4.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());
  REQUIRE(v4.receive().has_value());
}

TEST_CASE("stamp reflector: per-source rate limit") {
  probes::StampReflectorConfig config = loopback_config();
  config.rate_limit = {.rate_per_s = 1, .burst = 5};
  RunningStamp reflector(config);
  Sender s;
  constexpr int kSent = 40;
  for (int i = 0; i < kSent; ++i) s.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());
  const probes::StampReflectorCounters c = reflector.counters_after(kSent);
  CHECK(c.replied >= 5);
  CHECK(c.dropped_rate_limited > 0);
  CHECK(c.replied + c.dropped_rate_limited == kSent);
}

TEST_CASE("stamp reflector: Class of Service, unknown and overrunning TLVs, Sender TTL") {
  RunningStamp reflector(loopback_config());
  for (const bool v6 : {false, true}) {
    CAPTURE(v6);
    Sender s(v6);
    s.set_tos((10 << 2) | 1);  // AF11, ECT(1)
    s.set_ttl(77);
    Bytes p = request(stamp::Mode::kUnauthenticated, 1, 9, 44 + 8 + 6 + 6);
    const std::span<std::byte> tlvs = std::span(p).subspan(44);
    // A sender sets U on every TLV (RFC 8972 §4); the reflector clears it on those it understands.
    REQUIRE(stamp::encode_tlv_header(tlvs, stamp::kTlvFlagU, stamp::kTlvClassOfService, 4));
    REQUIRE(stamp::encode_class_of_service(tlvs.subspan(4), {.dscp1 = 46, .dscp2 = 0, .ecn = 0, .rp = 0}));
    REQUIRE(stamp::encode_tlv_header(tlvs.subspan(8), stamp::kTlvFlagU, 201, 2));
    tlvs[12] = std::byte{0xaa};
    tlvs[13] = std::byte{0xbb};
    REQUIRE(stamp::encode_tlv_header(tlvs.subspan(14), 0, 202, 100));  // overruns
    s.send(p, reflector.port());
    int tos = -1;
    const auto reply = s.receive(kReplyTimeoutMs, &tos);
    REQUIRE(reply.has_value());
    REQUIRE(reply->size() == p.size());
    CHECK((tos >> 2) == 46);  // sent with DSCP1
    CHECK(reply_of(*reply).sender_ttl == 77);
    const std::span<const std::byte> back = std::span<const std::byte>(*reply).subspan(44);
    stamp::ClassOfService cos;
    REQUIRE(stamp::decode_class_of_service(back.subspan(4), cos));
    CHECK(cos.dscp1 == 46);
    CHECK(cos.dscp2 == 10);
    CHECK(cos.ecn == 1);
    CHECK(cos.rp == 0);
    CHECK(back[0] == std::byte{0});
    CHECK(back[8] == std::byte{stamp::kTlvFlagU});
    CHECK(back[12] == std::byte{0xaa});
    CHECK(back[13] == std::byte{0xbb});
    CHECK(back[14] == std::byte{stamp::kTlvFlagM});
  }
  const probes::StampReflectorCounters c = reflector.counters_after(2);
  CHECK(c.tlvs_unrecognised == 2);
  CHECK(c.tlvs_malformed == 2);
}

TEST_CASE("stamp reflector: Error Estimate from the clock state, NTP and PTP timestamps") {
  platform::ClockStateCell::instance().assume(
      platform::ClockState{.synchronised = true, .estimated_error_ns = 10'000, .maximum_error_ns = 50'000});
  for (const auto format : {stamp::TimestampFormat::kNtp, stamp::TimestampFormat::kPtp}) {
    CAPTURE(static_cast<int>(format));
    probes::StampReflectorConfig config = loopback_config();
    config.timestamp_format = format;
    RunningStamp reflector(config);
    Sender s;
    const std::int64_t before = platform::realtime_ns();
    s.send(request(stamp::Mode::kUnauthenticated, 1, 1), reflector.port());
    const auto reply = s.receive();
    REQUIRE(reply.has_value());
    const stamp::ReflectorPacket r = reply_of(*reply);
    const platform::ErrorEstimate e = platform::decode_error_estimate(r.error_estimate);
    CHECK(e.synchronised);
    CHECK(e.ptp_format == (format == stamp::TimestampFormat::kPtp));
    CHECK(e.error_ns >= 50'000);
    CHECK(e.error_ns < 100'000);
    // Within an hour of the test's own clock: the right epoch and format, no timing claim.
    const std::int64_t rx = stamp::realtime_ns_from_wire(r.receive_timestamp, format);
    const std::int64_t tx = stamp::realtime_ns_from_wire(r.timestamp, format);
    CHECK(tx >= rx);
    CHECK(rx > before - 3'600'000'000'000);
    CHECK(rx < before + 3'600'000'000'000);
  }
  platform::ClockStateCell::instance().assume(std::nullopt);
}

TEST_CASE("stamp reflector: address prefixes") {
  const auto p = probes::AddressPrefix::parse("10.1.2.0/23");
  REQUIRE(p.has_value());
  std::array<std::uint8_t, 16> a{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 3, 200};
  CHECK(p->contains(a));
  a[14] = 4;
  CHECK_FALSE(p->contains(a));
  CHECK(probes::AddressPrefix::parse("::/0")->contains(a));
  CHECK_FALSE(probes::AddressPrefix::parse("::1/128")->contains(a));
  CHECK_FALSE(probes::AddressPrefix::parse("10.0.0.0/33").has_value());
  CHECK_FALSE(probes::AddressPrefix::parse("10.0.0.0/").has_value());
  CHECK_FALSE(probes::AddressPrefix::parse("host/8").has_value());
}

TEST_CASE("stamp reflector: a port in use, a bad address or a short key fail start() with the reason") {
  asio::io_context io;
  probes::StampReflectorConfig first = loopback_config();
  first.bind_address = "127.0.0.1";
  probes::StampReflector a(io, first);
  REQUIRE(a.start());
  probes::StampReflectorConfig second = first;
  second.port = a.local_endpoint().port();
  probes::StampReflector b(io, second);
  const platform::Status in_use = b.start();
  CHECK_FALSE(in_use);
  CHECK(in_use.code() == platform::Errc::kIo);

  probes::StampReflectorConfig bad = loopback_config();
  bad.bind_address = "localhost";
  probes::StampReflector c(io, bad);
  CHECK_FALSE(c.start());

  probes::StampReflectorConfig short_key = loopback_config();
  short_key.keys.push_back({.peers = {*probes::AddressPrefix::parse("::1")}, .key = Bytes(15, std::byte{1})});
  probes::StampReflector d(io, short_key);
  const platform::Status refused = d.start();
  CHECK_FALSE(refused);
  CHECK(refused.message().find("key length") != std::string::npos);
  a.stop();
  io.run();
}
