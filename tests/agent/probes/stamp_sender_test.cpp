// The UDP prober's STAMP session-sender over loopback, against a minimal session-reflector
// written here with the codec (stamp_packet.hpp): stateless and stateful, authenticated with the
// right and a wrong key, TWAMP-Light's 41-byte replies, the 32-bit sequence number's wrap and a
// foreign SSID. Assertions are on events and counters, never on speed.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/udp.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/probes/probe_event.hpp"
#include "agent/probes/stamp_packet.hpp"
#include "agent/probes/udp_prober.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "tests/agent/probes/event_ring.hpp"
#include "tests/agent/probes/started_on_thread.hpp"

namespace {

namespace probes = vantage::agent::probes;
namespace stamp = vantage::agent::probes::stamp;
namespace platform = vantage::platform;
using asio::ip::udp;
using probes::ProbeEvent;
using probes::ProbeEventKind;
using probes::ProbeProtocol;
using probes::StampStatefulReflector;
using probes::UdpProbeFormat;
using probes::UdpProber;
using probes::UdpProberConfig;
using probes::UdpProbeTarget;
using probes::test::EventRing;
using probes::test::StartedOnThread;
using namespace std::chrono_literals;

constexpr auto kDeadline = 10s;
constexpr std::uint64_t kSenderId = 0x57a3b;
// The reflector's Error Estimate: synchronised, 2 us.
constexpr std::int64_t kReflectorErrorNs = 2000;

std::vector<std::byte> key_of(std::uint8_t fill, std::size_t size = 32) {
  std::vector<std::byte> key(size);
  for (std::size_t i = 0; i < size; ++i) key[i] = std::byte(static_cast<std::uint8_t>(fill + i));
  return key;
}

struct ReflectorBehaviour {
  bool stateful = false;          // its own seq per socket, counting only what it answers
  std::vector<std::byte> key{};   // authenticated mode (replies signed with it; requests not checked)
  bool twamp_light = false;       // answer with the 41-byte TWAMP-Light layout
  std::optional<std::uint16_t> ssid{};  // answer with this SSID instead of the request's
  std::uint32_t drop_every = 0;   // ignore every Nth request (lost on the way out)
  stamp::TimestampFormat format = stamp::TimestampFormat::kNtp;
  std::uint32_t sender_seq_offset = 0;  // echo another Session-Sender Sequence Number
};

// A minimal RFC 8762 session-reflector on `sockets` loopback sockets, one thread polling them.
class TestReflector {
 public:
  TestReflector(ReflectorBehaviour behaviour, std::size_t sockets = 1, bool v6 = false)
      : behaviour_(std::move(behaviour)), sessions_(sockets) {
    for (std::size_t i = 0; i < sockets; ++i) {
      const int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
      REQUIRE(fd >= 0);
      sockaddr_storage ss{};
      socklen_t len = 0;
      if (v6) {
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_loopback;
        std::memcpy(&ss, &a, sizeof(a));
        len = sizeof(a);
      } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        std::memcpy(&ss, &a, sizeof(a));
        len = sizeof(a);
      }
      REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0);
      REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
      std::uint16_t port = 0;
      if (v6) {
        sockaddr_in6 a{};
        std::memcpy(&a, &ss, sizeof(a));
        port = ntohs(a.sin6_port);
      } else {
        sockaddr_in a{};
        std::memcpy(&a, &ss, sizeof(a));
        port = ntohs(a.sin_port);
      }
      fds_.push_back(fd);
      endpoints_.emplace_back(v6 ? asio::ip::address(asio::ip::address_v6::loopback())
                                 : asio::ip::address(asio::ip::address_v4::loopback()),
                              port);
    }
    thread_ = std::thread([this] { run(); });
  }
  ~TestReflector() {
    stop_ = true;
    thread_.join();
    for (const int fd : fds_) ::close(fd);
  }
  TestReflector(const TestReflector&) = delete;
  TestReflector& operator=(const TestReflector&) = delete;

  const udp::endpoint& endpoint(std::size_t i = 0) const { return endpoints_[i]; }

  // The requests received so far (decoded base and their length), all sockets.
  struct Request {
    stamp::SenderPacket packet;
    std::size_t size = 0;
    std::vector<std::byte> bytes;
  };
  std::vector<Request> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  void run() {
    std::vector<pollfd> polls;
    for (const int fd : fds_) polls.push_back(pollfd{fd, POLLIN, 0});
    std::array<std::byte, 9000> buffer{};
    while (!stop_) {
      if (::poll(polls.data(), polls.size(), 20) <= 0) continue;
      for (std::size_t i = 0; i < polls.size(); ++i) {
        if ((polls[i].revents & POLLIN) == 0) continue;
        for (;;) {
          sockaddr_storage peer{};
          socklen_t peer_len = sizeof(peer);
          const ssize_t n = ::recvfrom(fds_[i], buffer.data(), buffer.size(), 0, reinterpret_cast<sockaddr*>(&peer),
                                       &peer_len);
          if (n <= 0) break;
          answer(i, std::span<std::byte>(buffer.data(), static_cast<std::size_t>(n)), peer, peer_len);
        }
      }
    }
  }

  void answer(std::size_t socket, std::span<std::byte> packet, const sockaddr_storage& peer, socklen_t peer_len) {
    const std::int64_t rx = platform::realtime_ns();
    const stamp::Mode mode = behaviour_.key.empty() ? stamp::Mode::kUnauthenticated : stamp::Mode::kAuthenticated;
    stamp::SenderPacket request;
    if (!stamp::decode_sender(packet, mode, request)) return;
    {
      std::lock_guard lock(mutex_);
      requests_.push_back(Request{request, packet.size(), std::vector<std::byte>(packet.begin(), packet.end())});
    }
    Session& session = sessions_[socket];
    ++session.received;
    if (behaviour_.drop_every != 0 && session.received % behaviour_.drop_every == 0) return;
    stamp::ReflectorPacket reply;
    reply.seq = behaviour_.stateful ? session.next_seq++ : request.seq;
    reply.error_estimate = platform::encode_error_estimate(platform::ErrorEstimate{
        true, behaviour_.format == stamp::TimestampFormat::kPtp, kReflectorErrorNs});
    reply.ssid = behaviour_.ssid.value_or(request.ssid);
    reply.receive_timestamp = stamp::wire_timestamp(rx, behaviour_.format);
    reply.sender_seq = request.seq + behaviour_.sender_seq_offset;
    reply.sender_timestamp = request.timestamp;
    reply.sender_error_estimate = request.error_estimate;
    reply.sender_ttl = 64;
    const std::size_t size = behaviour_.twamp_light ? stamp::kTwampLightReplySize : packet.size();
    std::vector<std::byte> out(std::max(size, stamp::base_size(mode)), std::byte{0});
    reply.timestamp = stamp::wire_timestamp(platform::realtime_ns(), behaviour_.format);
    REQUIRE(stamp::encode_reflector(out, mode, reply));
    if (mode == stamp::Mode::kAuthenticated) REQUIRE(stamp::sign(out, behaviour_.key));
    (void)::sendto(fds_[socket], out.data(), size, 0, reinterpret_cast<const sockaddr*>(&peer), peer_len);
  }

  struct Session {
    std::uint32_t next_seq = 0;
    std::uint32_t received = 0;
  };

  ReflectorBehaviour behaviour_;
  std::vector<int> fds_;
  std::vector<udp::endpoint> endpoints_;
  std::vector<Session> sessions_;
  mutable std::mutex mutex_;
  std::vector<Request> requests_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A started UdpProber on its own io_context thread; the test thread is the ring's consumer.
class RunningProber {
 public:
  explicit RunningProber(UdpProberConfig config) : ring_(4096), prober_(io_, std::move(config), ring_) {}

  UdpProber* operator->() { return &prober_; }
  const std::vector<ProbeEvent>& events() const { return events_; }

  template <typename Pred>
  bool collect_until(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + kDeadline;
    for (;;) {
      for (const ProbeEvent& e : probes::test::drain_events(ring_)) events_.push_back(e);
      if (pred()) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
  }
  // Waits until `sent` probes left and then for the prober to have dealt with every datagram
  // the reflector answered (received counts each, dropped or not).
  // Waits until `sent` probes went out and `answered` datagrams came back, each with its outcome
  // counted: the prober counts a datagram as received before it handles it, so a snapshot in
  // between would show it received but not yet a reply or a drop.
  bool settle(std::uint64_t sent, std::uint64_t answered) {
    return collect_until([&] {
      const auto c = prober_.counters();
      const std::uint64_t handled =
          c.replies + c.dropped_foreign + c.dropped_malformed + c.dropped_unexpected + c.dropped_auth;
      return c.sent >= sent && c.received >= answered && handled >= c.received;
    }) && collect_until([&] { return count(ProbeEventKind::kSent) >= sent; });
  }
  std::vector<ProbeEvent> of_kind(ProbeEventKind kind) const {
    std::vector<ProbeEvent> out;
    std::copy_if(events_.begin(), events_.end(), std::back_inserter(out),
                 [kind](const ProbeEvent& e) { return e.kind == kind; });
    return out;
  }
  std::size_t count(ProbeEventKind kind) const { return of_kind(kind).size(); }

 private:
  asio::io_context io_;
  EventRing ring_;
  UdpProber prober_;
  std::vector<ProbeEvent> events_;
  StartedOnThread<UdpProber> started_{io_, prober_};
};

UdpProbeTarget stamp_target(const udp::endpoint& to, std::uint64_t count, std::vector<std::byte> key = {}) {
  UdpProbeTarget t;
  t.endpoint = to;
  t.index = 3;
  t.rate_per_s = 200;
  t.count = count;
  t.format = UdpProbeFormat::kStamp;
  t.stamp.key = std::move(key);
  t.payload_size = stamp::base_size(t.stamp.mode());
  return t;
}

UdpProberConfig config_of(std::vector<UdpProbeTarget> targets) {
  UdpProberConfig c;
  c.sender_id = kSenderId;
  c.jitter_seed = 7;
  c.targets = std::move(targets);
  return c;
}

// The sender's clock forced for the test's duration, as [clock] assume does.
struct AssumedClock {
  explicit AssumedClock(std::int64_t error_ns) {
    platform::ClockStateCell::instance().assume(
        platform::ClockState{true, error_ns, error_ns, platform::ClockSource::kConfigured});
  }
  ~AssumedClock() { platform::ClockStateCell::instance().assume(std::nullopt); }
};

}  // namespace

TEST_CASE("stamp sender: a stateless reflector answers every probe, replies carry the STAMP fields") {
  constexpr std::uint64_t kProbes = 20;
  const AssumedClock clock(50'000);
  TestReflector reflector({});
  RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes)}));
  REQUIRE(prober.settle(kProbes, kProbes));
  REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kProbes; }));

  const auto sent = prober.of_kind(ProbeEventKind::kSent);
  REQUIRE(sent.size() == kProbes);
  // A target whose reflector's kind is detected starts at a random 32-bit number.
  const std::uint64_t first = sent[0].seq;
  CHECK(first > 0);
  CHECK(first <= 0xffff'ffffu);
  for (std::size_t i = 0; i < sent.size(); ++i) {
    CHECK(sent[i].protocol == ProbeProtocol::kStamp);
    CHECK(sent[i].seq == first + i);
    CHECK(sent[i].send_ns > 0);  // CLOCK_MONOTONIC, as for UDP echo
    CHECK(sent[i].target == 3);
  }
  const auto replies = prober.of_kind(ProbeEventKind::kReply);
  REQUIRE(replies.size() == kProbes);
  std::vector<std::uint64_t> seqs;
  for (const ProbeEvent& e : replies) {
    seqs.push_back(e.seq);
    CHECK(e.protocol == ProbeProtocol::kStamp);
    CHECK(e.send_ns == 0);
    CHECK(e.send_ns_from_slot);
    CHECK(e.receive_ns > 0);
    CHECK(e.reflector_boot == 0);
    CHECK(e.session_id == 0);  // a stateless reflector: no loss direction
    CHECK(e.session_rx == static_cast<std::uint32_t>(e.seq) + 1);
    CHECK(e.reflector_dwell_ns >= 0);
    CHECK(e.one_way);
    CHECK(e.sender_synchronised);
    CHECK(e.sender_error_ns == 50'000);
    CHECK(e.reflector_synchronised);
    CHECK(e.reflector_error_ns >= kReflectorErrorNs);
    CHECK(e.reflector_error_ns < 2 * kReflectorErrorNs);
    // One host, one clock: each direction is the loopback's, well under the deadline.
    CHECK(e.forward_ns > -1'000'000);
    CHECK(e.forward_ns < 10'000'000'000);
    CHECK(e.backward_ns > -1'000'000);
    CHECK(e.backward_ns < 10'000'000'000);
  }
  std::sort(seqs.begin(), seqs.end());
  for (std::size_t i = 0; i < seqs.size(); ++i) CHECK(seqs[i] == first + i);

  const auto c = prober->counters();
  CHECK(c.sent == kProbes);
  CHECK(c.replies == kProbes);
  CHECK(c.dropped_unexpected == 0);
  CHECK(c.dropped_malformed == 0);
  CHECK(c.dropped_auth == 0);
  CHECK(c.invalid_dwell == 0);

  // What went out: 44 bytes, seq, a derived non-zero SSID, S set and the sender's error.
  const auto requests = reflector.requests();
  REQUIRE(requests.size() == kProbes);
  const std::uint16_t ssid = probes::stamp_ssid(kSenderId, 3);
  CHECK(ssid != 0);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    CHECK(requests[i].size == stamp::kUnauthenticatedSize);
    CHECK(requests[i].packet.seq == static_cast<std::uint32_t>(first + i));
    CHECK(requests[i].packet.ssid == ssid);
    const platform::ErrorEstimate e = platform::decode_error_estimate(requests[i].packet.error_estimate);
    CHECK(e.synchronised);
    CHECK_FALSE(e.ptp_format);
    CHECK(e.error_ns >= 50'000);
    const std::int64_t sent_at = stamp::realtime_ns_from_wire(requests[i].packet.timestamp, stamp::TimestampFormat::kNtp);
    CHECK(std::llabs(platform::realtime_ns() - sent_at) < 60'000'000'000LL);
  }
}

TEST_CASE("stamp sender: a stateful reflector's sequence numbers give the loss direction from the first reply") {
  constexpr std::uint64_t kProbes = 20;
  TestReflector reflector({.stateful = true, .drop_every = 5});
  RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes)}));
  constexpr std::uint64_t kAnswered = kProbes - kProbes / 5;
  REQUIRE(prober.settle(kProbes, kAnswered));
  REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kAnswered; }));
  auto replies = prober.of_kind(ProbeEventKind::kReply);
  REQUIRE(replies.size() == kAnswered);
  std::sort(replies.begin(), replies.end(), [](const ProbeEvent& a, const ProbeEvent& b) { return a.seq < b.seq; });
  // Probes 4, 9, 14, 19 of the target (the reflector's 5th, 10th, ...) never reached it. The
  // target starts at a random number and the reflector counts from 0, so its first reply already
  // shows it stateful.
  const std::uint64_t first = replies[0].seq;
  for (const ProbeEvent& e : replies) {
    const std::uint64_t k = e.seq - first;
    CHECK(e.session_rx == k - k / 5 + 1);
    CHECK(e.session_id == 1U);
  }
  CHECK(prober->counters().replies == kAnswered);

  SUBCASE("configured stateful: direction from the first reply") {
    TestReflector stateful({.stateful = true});
    UdpProbeTarget t = stamp_target(stateful.endpoint(), 5);
    t.stamp.stateful_reflector = StampStatefulReflector::kYes;
    RunningProber p(config_of({t}));
    REQUIRE(p.settle(5, 5));
    REQUIRE(p.collect_until([&] { return p.count(ProbeEventKind::kReply) >= 5; }));
    for (const ProbeEvent& e : p.of_kind(ProbeEventKind::kReply)) CHECK(e.session_id == 1);
  }
  SUBCASE("configured stateless: never a direction") {
    TestReflector lossy({.stateful = true, .drop_every = 2});
    UdpProbeTarget t = stamp_target(lossy.endpoint(), 6);
    t.stamp.stateful_reflector = StampStatefulReflector::kNo;
    RunningProber p(config_of({t}));
    REQUIRE(p.settle(6, 3));
    REQUIRE(p.collect_until([&] { return p.count(ProbeEventKind::kReply) >= 3; }));
    for (const ProbeEvent& e : p.of_kind(ProbeEventKind::kReply)) CHECK(e.session_id == 0);
  }
}

TEST_CASE("stamp sender: authenticated mode accepts the right key's HMAC and drops and counts a wrong one") {
  constexpr std::uint64_t kProbes = 10;
  SUBCASE("right key") {
    TestReflector reflector({.key = key_of(1)});
    UdpProbeTarget t = stamp_target(reflector.endpoint(), kProbes, key_of(1));
    t.payload_size = 150;  // 112 + an Extra Padding TLV of 34 bytes
    RunningProber prober(config_of({t}));
    REQUIRE(prober.settle(kProbes, kProbes));
    REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kProbes; }));
    const auto c = prober->counters();
    CHECK(c.replies == kProbes);
    CHECK(c.dropped_auth == 0);
    for (const ProbeEvent& e : prober.of_kind(ProbeEventKind::kReply)) CHECK(e.one_way);
    for (const auto& r : reflector.requests()) {
      REQUIRE(r.size == 150);
      CHECK(stamp::verify_hmac(r.bytes, key_of(1)));
      stamp::TlvWalker walker(std::span<const std::byte>(r.bytes).subspan(stamp::kAuthenticatedSize));
      stamp::Tlv tlv;
      REQUIRE(walker.next(tlv));
      CHECK(tlv.type == stamp::kTlvExtraPadding);
      CHECK(tlv.length == 150 - 112 - 4);
      CHECK_FALSE(tlv.malformed);
      CHECK_FALSE(walker.next(tlv));
    }
  }
  SUBCASE("wrong key") {
    TestReflector reflector({.key = key_of(2)});
    RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes, key_of(1))}));
    REQUIRE(prober.settle(kProbes, kProbes));
    const auto c = prober->counters();
    CHECK(c.replies == 0);
    CHECK(c.dropped_auth == kProbes);
    CHECK(prober.count(ProbeEventKind::kReply) == 0);
  }
  SUBCASE("an unauthenticated reflector's 44-byte replies") {
    TestReflector reflector({});
    RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes, key_of(1))}));
    REQUIRE(prober.settle(kProbes, kProbes));
    CHECK(prober->counters().dropped_auth == kProbes);
    CHECK(prober->counters().replies == 0);
  }
}

TEST_CASE("stamp sender: a TWAMP-Light reflector's 41-byte replies are accepted") {
  constexpr std::uint64_t kProbes = 10;
  TestReflector reflector({.twamp_light = true});
  RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes)}));
  REQUIRE(prober.settle(kProbes, kProbes));
  REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kProbes; }));
  const auto c = prober->counters();
  CHECK(c.replies == kProbes);
  CHECK(c.dropped_malformed == 0);
  CHECK(c.dropped_unexpected == 0);
}

TEST_CASE("stamp sender: the 32-bit wire sequence number wraps and replies keep the 64-bit seq") {
  constexpr std::uint64_t kProbes = 10;
  constexpr std::uint64_t kFirst = (std::uint64_t{1} << 32) - 5;
  for (const bool stateful : {false, true}) {
    CAPTURE(stateful);
    TestReflector reflector({.stateful = stateful});
    UdpProberConfig config = config_of({stamp_target(reflector.endpoint(), kProbes)});
    config.first_seq = kFirst;
    RunningProber prober(config);
    REQUIRE(prober.settle(kProbes, kProbes));
    REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kProbes; }));
    std::vector<std::uint64_t> seqs;
    for (const ProbeEvent& e : prober.of_kind(ProbeEventKind::kReply)) seqs.push_back(e.seq);
    std::sort(seqs.begin(), seqs.end());
    REQUIRE(seqs.size() == kProbes);
    for (std::size_t i = 0; i < kProbes; ++i) CHECK(seqs[i] == kFirst + i);
    const auto requests = reflector.requests();
    REQUIRE(requests.size() == kProbes);
    CHECK(requests[4].packet.seq == 0xffffffffU);
    CHECK(requests[5].packet.seq == 0U);
    CHECK(prober->counters().dropped_unexpected == 0);
  }
}

TEST_CASE("stamp sender: replies with another SSID, or for a probe not sent, are dropped as unexpected") {
  constexpr std::uint64_t kProbes = 8;
  SUBCASE("foreign SSID") {
    UdpProbeTarget t;
    TestReflector reflector({.ssid = 0x1234});
    t = stamp_target(reflector.endpoint(), kProbes);
    t.stamp.ssid = 0x4321;
    RunningProber prober(config_of({t}));
    REQUIRE(prober.settle(kProbes, kProbes));
    const auto c = prober->counters();
    CHECK(c.dropped_unexpected == kProbes);
    CHECK(c.replies == 0);
    for (const auto& r : reflector.requests()) CHECK(r.packet.ssid == 0x4321);
  }
  SUBCASE("SSID 0: a plain RFC 8762 reflector's MBZ") {
    TestReflector reflector({.ssid = 0});
    RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes)}));
    REQUIRE(prober.settle(kProbes, kProbes));
    CHECK(prober->counters().replies == kProbes);
    CHECK(prober->counters().dropped_unexpected == 0);
  }
  SUBCASE("a sequence number ahead of what was sent") {
    TestReflector reflector({.sender_seq_offset = 1000});
    RunningProber prober(config_of({stamp_target(reflector.endpoint(), kProbes)}));
    REQUIRE(prober.settle(kProbes, kProbes));
    CHECK(prober->counters().dropped_unexpected == kProbes);
    CHECK(prober->counters().replies == 0);
  }
}

TEST_CASE("stamp sender: PTP timestamps both ways, over IPv6") {
  constexpr std::uint64_t kProbes = 6;
  TestReflector reflector({.format = stamp::TimestampFormat::kPtp}, 1, true);
  UdpProbeTarget t = stamp_target(reflector.endpoint(), kProbes);
  t.stamp.timestamp_format = stamp::TimestampFormat::kPtp;
  RunningProber prober(config_of({t}));
  REQUIRE(prober.settle(kProbes, kProbes));
  REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kProbes; }));
  for (const ProbeEvent& e : prober.of_kind(ProbeEventKind::kReply)) {
    CHECK(e.one_way);
    CHECK(e.forward_ns > -1'000'000);
    CHECK(e.forward_ns < 10'000'000'000);
    CHECK(e.backward_ns > -1'000'000);
    CHECK(e.backward_ns < 10'000'000'000);
  }
  for (const auto& r : reflector.requests()) {
    CHECK(platform::decode_error_estimate(r.packet.error_estimate).ptp_format);
  }
}

TEST_CASE("stamp sender: 200 targets at once, each matched to its own reflector socket") {
  constexpr std::size_t kTargets = 200;
  constexpr std::uint64_t kProbes = 3;
  TestReflector reflector({.stateful = true}, kTargets);
  std::vector<UdpProbeTarget> targets;
  for (std::size_t i = 0; i < kTargets; ++i) {
    UdpProbeTarget t = stamp_target(reflector.endpoint(i), kProbes);
    t.index = static_cast<std::uint32_t>(i);
    t.rate_per_s = 20;
    targets.push_back(t);
  }
  RunningProber prober(config_of(targets));
  REQUIRE(prober.settle(kTargets * kProbes, kTargets * kProbes));
  REQUIRE(prober.collect_until([&] { return prober.count(ProbeEventKind::kReply) >= kTargets * kProbes; }));
  std::map<std::uint32_t, std::size_t> per_target;
  for (const ProbeEvent& e : prober.of_kind(ProbeEventKind::kReply)) ++per_target[e.target];
  CHECK(per_target.size() == kTargets);
  for (const auto& [target, n] : per_target) CHECK(n == kProbes);
  const auto c = prober->counters();
  CHECK(c.replies == kTargets * kProbes);
  CHECK(c.dropped_unexpected == 0);
  CHECK(c.dropped_foreign == 0);
}

TEST_CASE("stamp sender: invalid STAMP targets are refused") {
  asio::io_context io;
  EventRing ring(64);
  const udp::endpoint to(asio::ip::address_v4::loopback(), 862);
  auto refused = [&](UdpProbeTarget t) {
    UdpProber prober(io, config_of({t}), ring);
    const bool ok = static_cast<bool>(prober.start());
    prober.stop();
    io.run();
    io.restart();
    return !ok;
  };
  UdpProbeTarget t = stamp_target(to, 1);
  t.payload_size = 43;
  CHECK(refused(t));
  t = stamp_target(to, 1, key_of(1));
  t.payload_size = 111;
  CHECK(refused(t));
  t = stamp_target(to, 1, key_of(1, 15));
  CHECK(refused(t));
  t = stamp_target(to, 1);
  t.paths = 2;
  CHECK(refused(t));
  CHECK_FALSE(refused(stamp_target(to, 1)));
}
