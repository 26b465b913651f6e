// Reflector tests over real UDP sockets on 127.0.0.1 and ::1: echo with dwell timestamps and
// session counters, silent counted drops, per-source rate limiting under a flood, timestamp
// sources, dual stack, replies from the probed address (127.0.0.2, 127.0.0.3) and start/stop. Assertions are
// on counts, never on timing, so they hold under QEMU user mode, ASan and TSan.
#include <doctest/doctest.h>

#include <poll.h>
#include <time.h>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/udp.hpp>
#include <asio/ip/v6_only.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "agent/probes/probe_packet.hpp"
#include "agent/probes/reflector.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "agent/probes/udp_prober.hpp"
#include "platform/spsc_ring.hpp"
#include "tests/agent/probes/event_ring.hpp"
#include "tests/agent/probes/running_reflector.hpp"

namespace {

namespace probes = vantage::agent::probes;
using asio::ip::udp;
using probes::kProbeHeaderSize;
using probes::ProbeDecodeStatus;
using probes::ProbeHeader;
using probes::ProbeKind;
using probes::Reflector;
using probes::ReflectorConfig;
using probes::ReflectorCounters;
using probes::TimestampSource;
using probes::test::RunningReflector;

using Bytes = std::vector<std::byte>;

// Generous: only reached when something is already wrong, and QEMU with sanitizers is slow.
constexpr auto kReplyTimeout = std::chrono::seconds(10);

// The reflector's stamps are unsigned.
std::uint64_t clock_ns(clockid_t clock) { return static_cast<std::uint64_t>(vantage::platform::clock_ns(clock)); }

Bytes probe(std::uint64_t seq, std::size_t size = kProbeHeaderSize, std::uint64_t sender = 0xabcdef) {
  ProbeHeader h;
  h.sequence = seq;
  h.sender_id = sender;
  h.send_ns = clock_ns(CLOCK_MONOTONIC);
  Bytes b(size);
  REQUIRE(probes::encode_request(h, b, size) == size);
  // Recognisable padding, to check it comes back unchanged.
  for (std::size_t i = kProbeHeaderSize; i < size; ++i) {
    b[i] = static_cast<std::byte>(seq + i);
  }
  return b;
}

// A blocking client socket with receive timeouts (poll), bound to a chosen local address.
class Peer {
 public:
  explicit Peer(const std::string& local_address) : socket_(io_) {
    const udp::endpoint local(asio::ip::make_address(local_address), 0);
    socket_.open(local.protocol());
    // "::" is a dual-stack client, to send to v4-mapped addresses whatever the host's default.
    if (local.address().is_v6() && local.address().is_unspecified()) {
      socket_.set_option(asio::ip::v6_only(false));
    }
    socket_.bind(local);
  }

  void send(const udp::endpoint& to, const Bytes& b) {
    socket_.send_to(asio::buffer(b.data(), b.size()), to);
  }

  std::optional<Bytes> receive(std::chrono::milliseconds timeout) {
    auto r = receive_from(timeout);
    return r ? std::optional<Bytes>(std::move(r->first)) : std::nullopt;
  }

  // A reply and the endpoint it came from.
  std::optional<std::pair<Bytes, udp::endpoint>> receive_from(std::chrono::milliseconds timeout) {
    pollfd pfd{socket_.native_handle(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) != 1) {
      return std::nullopt;
    }
    Bytes b(65536);
    udp::endpoint from;
    b.resize(socket_.receive_from(asio::buffer(b.data(), b.size()), from));
    return std::pair{std::move(b), from};
  }

 private:
  asio::io_context io_;
  udp::socket socket_;
};

ReflectorConfig loopback_config(const std::string& address) {
  ReflectorConfig c;
  c.bind_address = address;
  c.port = 0;
  return c;
}

ProbeHeader decode_reply(const Bytes& b) {
  ProbeHeader h;
  REQUIRE(probes::decode_probe(b, ProbeKind::kReply, h) == ProbeDecodeStatus::kOk);
  return h;
}

// ::ffff:a.b.c.d and a.b.c.d are one address: what a dual-stack socket reports for IPv4.
asio::ip::address unmapped(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}

// Says which way replies leave, so a run where the fallback is active shows it. Natively the
// kernel always takes pktinfo; under QEMU user mode it depends on the emulator's version.
void report_reply_source(Reflector& r) {
  const std::string how = r.replies_from_destination() ? "yes (pktinfo)" : "no: fallback to plain sendto";
  MESSAGE("replies from destination: " << how);
#if defined(__x86_64__)
  CHECK(r.replies_from_destination());
#endif
}

// A reply from the probed endpoint, or, where pktinfo is unavailable, from anywhere: then the
// fallback must be reported (replied_unpinned, checked by the callers).
void check_reply_source(Reflector& r, const udp::endpoint& from, const udp::endpoint& probed) {
  CAPTURE(from);
  CAPTURE(probed);
  if (r.replies_from_destination()) {
    CHECK(unmapped(from.address()) == unmapped(probed.address()));
    CHECK(from.port() == probed.port());
  } else {
    MESSAGE("fallback active: a probe to " << probed << " was answered from " << from);
  }
}

void check_balanced(const ReflectorCounters& c) {
  CHECK(c.received == c.replied + c.dropped_short + c.dropped_malformed + c.dropped_foreign +
                          c.dropped_rate_limited + c.send_errors);
  CHECK(c.receive_errors == 0);
}

}  // namespace

TEST_CASE("echo over 127.0.0.1 and ::1 with dwell timestamps and session counters") {
  for (const std::string address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    RunningReflector r(loopback_config(address));
    Peer peer(address);
    const auto to = r.target(address);

    const std::size_t sizes[] = {kProbeHeaderSize, kProbeHeaderSize + 1, 200, probes::kDefaultMaxProbeSize};
    std::uint32_t session_id = 0;
    for (std::uint32_t i = 0; i < std::size(sizes); ++i) {
      const Bytes request = probe(100 + i, sizes[i]);
      peer.send(to, request);
      const auto reply = peer.receive(kReplyTimeout);
      REQUIRE(reply.has_value());
      REQUIRE(reply->size() == request.size());
      const ProbeHeader req = [&] {
        ProbeHeader h;
        REQUIRE(probes::decode_probe(request, ProbeKind::kRequest, h) == ProbeDecodeStatus::kOk);
        return h;
      }();
      const ProbeHeader rep = decode_reply(*reply);
      CHECK(rep.sequence == req.sequence);
      CHECK(rep.sender_id == req.sender_id);
      CHECK(rep.send_ns == req.send_ns);
      CHECK(rep.reflector_rx_ns <= rep.reflector_tx_ns);
      CHECK(rep.reflector_tx_ns - rep.reflector_rx_ns < 10'000'000'000ULL);
      CHECK(rep.reflector_boot == r->boot_id());
      CHECK(rep.reflector_boot != 0);
      CHECK(((rep.flags & probes::kFlagKernelRxTimestamp) != 0) ==
            (r->timestamp_source() == TimestampSource::kKernelRealtime));
      if (i == 0) {
        session_id = rep.session_id;
      }
      CHECK(rep.session_id != 0);
      CHECK(rep.session_id == session_id);
      CHECK(rep.session_rx == i + 1);
      CHECK(std::equal(reply->begin() + kProbeHeaderSize, reply->end(), request.begin() + kProbeHeaderSize));
    }
    const auto c = r.counters_after(std::size(sizes));
    CHECK(c.received == std::size(sizes));
    CHECK(c.replied == std::size(sizes));
    check_balanced(c);
  }
}

TEST_CASE("sessions are per sender id, and a restarted reflector has a new boot id") {
  std::uint64_t first_boot = 0;
  std::uint16_t port = 0;
  {
    RunningReflector r(loopback_config("127.0.0.1"));
    port = r->local_endpoint().port();
    Peer peer("127.0.0.1");
    const auto to = r.target("127.0.0.1");
    // Two probers on one host: interleaved, each sees its own count.
    std::uint32_t ids[2] = {};
    for (std::uint32_t round = 1; round <= 3; ++round) {
      for (std::uint64_t sender = 0; sender < 2; ++sender) {
        peer.send(to, probe(round, kProbeHeaderSize, 1000 + sender));
        const auto reply = peer.receive(kReplyTimeout);
        REQUIRE(reply.has_value());
        const ProbeHeader rep = decode_reply(*reply);
        CHECK(rep.sender_id == 1000 + sender);
        CHECK(rep.session_rx == round);
        if (round == 1) {
          ids[sender] = rep.session_id;
        }
        CHECK(rep.session_id == ids[sender]);
      }
    }
    CHECK(ids[0] != ids[1]);
    first_boot = r->boot_id();
  }
  ReflectorConfig again = loopback_config("127.0.0.1");
  again.port = port;  // the same endpoint, as after a service restart
  RunningReflector r(again);
  Peer peer("127.0.0.1");
  peer.send(r.target("127.0.0.1"), probe(4));
  const auto reply = peer.receive(kReplyTimeout);
  REQUIRE(reply.has_value());
  const ProbeHeader rep = decode_reply(*reply);
  CHECK(rep.reflector_boot != first_boot);
  CHECK(rep.session_rx == 1);
}

TEST_CASE("short, malformed and foreign datagrams are dropped silently and counted") {
  for (const std::string address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    ReflectorConfig config = loopback_config(address);
    config.max_probe_size = 256;
    RunningReflector r(config);
    Peer peer(address);
    const auto to = r.target(address);

    const Bytes good = probe(1);
    auto cut = [&](std::size_t n) {
      return Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    };
    auto with_byte = [&](std::size_t at, std::uint8_t v) {
      Bytes b = good;
      b[at] = std::byte{v};
      return b;
    };
    const std::vector<Bytes> short_ones = {Bytes{}, cut(3), cut(4), cut(10), cut(kProbeHeaderSize - 1)};
    const std::vector<Bytes> foreign = {with_byte(0, 'X'), Bytes(10, std::byte{0x55}),
                                        Bytes(1500, std::byte{0})};
    Bytes reply_flag = good;
    probes::stamp_reply(reply_flag, probes::ReplyStamp{});
    const std::vector<Bytes> malformed = {
        with_byte(4, 2),     // version
        with_byte(5, 0x80),  // unknown flag
        with_byte(5, probes::kFlagKernelRxTimestamp),
        reply_flag,       // a reply is never answered: no reflector ping-pong
        with_byte(6, 1),  // reserved
        probe(2, 257),    // one byte over this reflector's maximum
        probe(3, 8000),   // larger than the receive buffer: arrives truncated
    };
    for (const auto* set : {&short_ones, &foreign, &malformed}) {
      for (const Bytes& b : *set) {
        peer.send(to, b);
      }
    }
    peer.send(to, probe(77, 256));
    // Datagrams from one socket are handled in order, so a reply to any bad one would arrive first.
    const auto reply = peer.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    CHECK(reply->size() == 256);
    CHECK(decode_reply(*reply).sequence == 77);

    const std::uint64_t total = short_ones.size() + foreign.size() + malformed.size() + 1;
    const auto c = r.counters_after(total);
    CHECK(c.received == total);
    CHECK(c.replied == 1);
    CHECK(c.dropped_short == short_ones.size());
    CHECK(c.dropped_foreign == foreign.size());
    CHECK(c.dropped_malformed == malformed.size());
    CHECK(c.dropped_rate_limited == 0);
    check_balanced(c);
    CHECK_FALSE(peer.receive(std::chrono::milliseconds(50)).has_value());
  }
}

TEST_CASE("a flood of garbage and a 10x over-rate source do not cost a well-behaved prober a reply") {
  // Per source address, so the three peers use three loopback addresses.
  ReflectorConfig config = loopback_config("127.0.0.1");
  config.rate_limit = {.rate_per_s = 20, .burst = 40};
  RunningReflector r(config);
  const auto to = r.target("127.0.0.1");
  Peer prober("127.0.0.1");
  Peer flooder("127.0.0.2");
  Peer garbage("127.0.0.3");

  // The prober stays within its burst, so it is never limited however slow the machine is.
  // Each round queues at most 21 datagrams, far below the socket buffer, so loopback loses none.
  constexpr std::uint32_t kRounds = 30;
  constexpr std::uint32_t kPerRound = 10;
  Bytes bad_version = probe(0);
  bad_version[4] = std::byte{9};
  const Bytes garbage_kinds[] = {Bytes(3, std::byte{1}), Bytes(100, std::byte{0xee}), bad_version};
  std::uint32_t replies = 0;
  const auto start = std::chrono::steady_clock::now();
  for (std::uint32_t round = 0; round < kRounds; ++round) {
    for (std::uint32_t k = 0; k < kPerRound; ++k) {
      garbage.send(to, garbage_kinds[(round * kPerRound + k) % 3]);
      flooder.send(to, probe(round * kPerRound + k, 100, 666));
    }
    prober.send(to, probe(round, 64, 1));
    const auto reply = prober.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    const ProbeHeader rep = decode_reply(*reply);
    CHECK(rep.sequence == round);
    CHECK(rep.session_rx == round + 1);
    ++replies;
  }
  const std::uint64_t total = kRounds * (2 * kPerRound + 1);
  const auto c = r.counters_after(total);
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(replies == kRounds);

  CHECK(c.received == total);
  CHECK(c.dropped_short == kRounds * kPerRound / 3);
  CHECK(c.dropped_foreign == kRounds * kPerRound / 3);
  CHECK(c.dropped_malformed == kRounds * kPerRound / 3);
  CHECK(c.send_errors == 0);
  check_balanced(c);

  // The flooder gets its burst plus the rate over however long the test took, no more.
  const std::uint64_t flooder_replies = c.replied - kRounds;
  const double allowed = config.rate_limit.burst + config.rate_limit.rate_per_s * elapsed_s + 1.0;
  CAPTURE(elapsed_s);
  CHECK(flooder_replies >= config.rate_limit.burst);
  CHECK(static_cast<double>(flooder_replies) <= allowed);
  CHECK(c.dropped_rate_limited == kRounds * kPerRound - flooder_replies);
  CHECK(c.dropped_rate_limited > 0);

  // And the flooder really received exactly those replies.
  std::uint64_t received_by_flooder = 0;
  while (flooder.receive(std::chrono::milliseconds(200)).has_value()) {
    ++received_by_flooder;
  }
  CHECK(received_by_flooder == flooder_replies);
}

TEST_CASE("receive timestamps: kernel where the socket accepts them, CLOCK_MONOTONIC otherwise") {
  SUBCASE("kernel requested") {
    RunningReflector r(loopback_config("::1"));
    const TimestampSource source = r->timestamp_source();
    MESSAGE("timestamp source: " << std::string(probes::to_string(source)));
#if defined(__x86_64__)
    // Native runs only: QEMU user mode (the ARM builds) refuses SO_TIMESTAMPNS.
    CHECK(source == TimestampSource::kKernelRealtime);
#endif
    Peer peer("::1");
    peer.send(r.target("::1"), probe(1));
    const auto reply = peer.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    const ProbeHeader rep = decode_reply(*reply);
    const bool kernel = source == TimestampSource::kKernelRealtime;
    CHECK(((rep.flags & probes::kFlagKernelRxTimestamp) != 0) == kernel);
    // Kernel stamps are wall-clock time, user-space ones monotonic: each is near its own clock.
    const std::uint64_t now = clock_ns(kernel ? CLOCK_REALTIME : CLOCK_MONOTONIC);
    CHECK(rep.reflector_rx_ns <= rep.reflector_tx_ns);
    CHECK(rep.reflector_tx_ns <= now);
    CHECK(now - rep.reflector_rx_ns < 60'000'000'000ULL);
  }
  SUBCASE("user-space fallback") {
    ReflectorConfig config = loopback_config("127.0.0.1");
    config.kernel_timestamps = false;
    RunningReflector r(config);
    CHECK(r->timestamp_source() == TimestampSource::kUserMonotonic);
    Peer peer("127.0.0.1");
    const std::uint64_t before = clock_ns(CLOCK_MONOTONIC);
    peer.send(r.target("127.0.0.1"), probe(1));
    const auto reply = peer.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    const std::uint64_t after = clock_ns(CLOCK_MONOTONIC);
    const ProbeHeader rep = decode_reply(*reply);
    CHECK((rep.flags & probes::kFlagKernelRxTimestamp) == 0);
    CHECK(before <= rep.reflector_rx_ns);
    CHECK(rep.reflector_rx_ns <= rep.reflector_tx_ns);
    CHECK(rep.reflector_tx_ns <= after);
  }
}

TEST_CASE("a dual-stack reflector on :: answers 127.0.0.1 and ::1 alike") {
  RunningReflector r(loopback_config("::"));
  std::uint32_t sessions[2] = {};
  int i = 0;
  for (const std::string address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    Peer peer(address);
    peer.send(r.target(address), probe(5, 300));
    const auto reply = peer.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    CHECK(reply->size() == 300);
    const ProbeHeader rep = decode_reply(*reply);
    CHECK(rep.sequence == 5);
    CHECK(rep.session_rx == 1);
    sessions[i++] = rep.session_id;
  }
  // Distinct source addresses, distinct sessions.
  CHECK(sessions[0] != sessions[1]);
  CHECK(r.counters_after(2).replied == 2);
}

TEST_CASE("wildcard reflectors answer 127.0.0.2 and 127.0.0.3 from exactly that address") {
  for (const std::string bind : {"0.0.0.0", "::"}) {
    CAPTURE(bind);
    RunningReflector r(loopback_config(bind));
    report_reply_source(*r);
    // The client's own address is 127.0.0.1, so routing alone would answer from 127.0.0.1.
    Peer peer("127.0.0.1");
    std::uint64_t sent = 0;
    for (const std::string address : {"127.0.0.2", "127.0.0.3", "127.0.0.1"}) {
      CAPTURE(address);
      const auto to = r.target(address);
      peer.send(to, probe(++sent));
      const auto reply = peer.receive_from(kReplyTimeout);
      REQUIRE(reply.has_value());
      CHECK(decode_reply(reply->first).sequence == sent);
      check_reply_source(*r, reply->second, to);
    }
    const auto c = r.counters_after(sent);
    CHECK(c.replied == sent);
    CHECK(c.replied_unpinned == (r->replies_from_destination() ? 0 : sent));
    check_balanced(c);
  }
}

TEST_CASE("a dual-stack reflector answers ::ffff:127.0.0.2 and ::1 from the probed address") {
  RunningReflector r(loopback_config("::"));
  report_reply_source(*r);
  std::uint64_t sent = 0;
  const std::pair<std::string, std::string> cases[] = {{"::", "::ffff:127.0.0.2"}, {"::1", "::1"}};
  for (const auto& [local, address] : cases) {
    CAPTURE(address);
    Peer peer(local);
    const auto to = r.target(address);
    peer.send(to, probe(++sent));
    const auto reply = peer.receive_from(kReplyTimeout);
    REQUIRE(reply.has_value());
    if (r->replies_from_destination()) {
      // Not only the same address after unmapping: the very form the client sent to.
      CHECK(reply->second == to);
    }
    check_reply_source(*r, reply->second, to);
  }
  const auto c = r.counters_after(sent);
  CHECK(c.replied == sent);
  CHECK(c.replied_unpinned == (r->replies_from_destination() ? 0 : sent));
}

TEST_CASE("a UdpProber targeting 127.0.0.2 gets its replies from wildcard reflectors") {
  constexpr std::uint64_t kProbes = 3;
  for (const std::string bind : {"0.0.0.0", "::"}) {
    CAPTURE(bind);
    RunningReflector r(loopback_config(bind));
    report_reply_source(*r);
    asio::io_context io;
    probes::test::EventRing ring(64);
    probes::UdpProberConfig config;
    config.sender_id = 0x5eed;
    config.jitter_seed = 7;
    probes::UdpProbeTarget target;
    target.endpoint = r.target("127.0.0.2");
    target.rate_per_s = 50;
    target.count = kProbes;
    config.targets.push_back(target);
    probes::UdpProber prober(io, config, ring);
    REQUIRE(prober.start());
    const auto deadline = std::chrono::steady_clock::now() + kReplyTimeout;
    for (;;) {
      io.run_for(std::chrono::milliseconds(10));
      const auto pc = prober.counters();
      if (pc.received >= kProbes || std::chrono::steady_clock::now() >= deadline) {
        break;
      }
    }
    prober.stop();
    io.run_for(kReplyTimeout);
    const auto pc = prober.counters();
    CHECK(pc.sent == kProbes);
    CHECK(pc.received == kProbes);
    if (r->replies_from_destination()) {
      CHECK(pc.replies == kProbes);
      CHECK(pc.dropped_foreign == 0);
    } else {
      MESSAGE("fallback active: the prober accepted " << pc.replies << " of " << kProbes << " replies");
      CHECK(r.counters_after(kProbes).replied_unpinned == kProbes);
    }
  }
}

TEST_CASE("with pktinfo off, replies go out by plain sendto and say so") {
  ReflectorConfig config = loopback_config("0.0.0.0");
  config.reply_from_destination = false;
  RunningReflector r(config);
  CHECK_FALSE(r->replies_from_destination());
  Peer peer("127.0.0.1");
  for (const std::string address : {"127.0.0.1", "127.0.0.2"}) {
    CAPTURE(address);
    peer.send(r.target(address), probe(1));
    const auto reply = peer.receive_from(kReplyTimeout);
    REQUIRE(reply.has_value());
    MESSAGE("a probe to " << address << " was answered from " << reply->second);
  }
  const auto c = r.counters_after(2);
  CHECK(c.replied == 2);
  CHECK(c.replied_unpinned == 2);
}

TEST_CASE("start reports bad configs and busy ports and stop ends the io_context's work") {
  asio::io_context io;
  auto start_with = [&](ReflectorConfig c) {
    Reflector reflector(io, std::move(c));
    return reflector.start();
  };
  ReflectorConfig c = loopback_config("127.0.0.1");
  c.max_probe_size = kProbeHeaderSize - 1;
  CHECK(start_with(c).code() == vantage::platform::Errc::kInvalid);
  c = loopback_config("127.0.0.1");
  c.max_probe_size = probes::kMaxProbeSize + 1;
  CHECK(start_with(c).code() == vantage::platform::Errc::kInvalid);
  c = loopback_config("127.0.0.1");
  c.rate_limit.rate_per_s = 0;
  CHECK(start_with(c).code() == vantage::platform::Errc::kInvalid);
  c = loopback_config("not an address");
  CHECK(start_with(c).code() == vantage::platform::Errc::kInvalid);

  Reflector first(io, loopback_config("127.0.0.1"));
  REQUIRE(first.start());
  ReflectorConfig same = loopback_config("127.0.0.1");
  same.port = first.local_endpoint().port();
  const vantage::platform::Status busy = start_with(same);
  CHECK(busy.code() == vantage::platform::Errc::kIo);
  CHECK(busy.message() == std::error_code(EADDRINUSE, std::system_category()).message());

  io.restart();
  first.stop();
  first.stop();
  // Returns only because stop() left no pending wait behind.
  io.run();
  CHECK(first.counters().received == 0);
}

TEST_CASE("the clock extension comes back filled with wall-clock stamps and the Error Estimate") {
  namespace platform = vantage::platform;
  platform::ClockStateCell::instance().assume(platform::ClockState{true, 50'000, 50'000, {}});
  for (const bool kernel : {true, false}) {
    CAPTURE(kernel);
    ReflectorConfig config = loopback_config("127.0.0.1");
    config.kernel_timestamps = kernel;
    RunningReflector r(config);
    Peer peer("127.0.0.1");
    Bytes request = probe(1, probes::kClockProbeSize);
    const std::int64_t before = platform::realtime_ns();
    REQUIRE(probes::write_clock_request(request, before, 0));
    peer.send(r.target("127.0.0.1"), request);
    const auto reply = peer.receive(kReplyTimeout);
    REQUIRE(reply.has_value());
    const std::int64_t after = platform::realtime_ns();
    REQUIRE(reply->size() == request.size());
    decode_reply(*reply);
    const auto ext = probes::read_clock_extension(*reply);
    REQUIRE(ext.has_value());
    CHECK(ext->reflected);
    CHECK(ext->sender_tx_ns == before);
    CHECK(ext->reflector_rx_ns <= ext->reflector_tx_ns);
    // Wall clock, so between the client's two reads (a realtime step during the test aside).
    CHECK(ext->reflector_rx_ns >= before - 1'000'000'000);
    CHECK(ext->reflector_tx_ns <= after + 1'000'000'000);
    const platform::ErrorEstimate ee = platform::decode_error_estimate(ext->reflector_error);
    CHECK(ee.synchronised);
    CHECK(ee.error_ns >= 50'000);
    CHECK(ee.error_ns < 51'000);
    probes::ProbeEvent e;
    probes::fill_one_way(e, *reply, after);
    CHECK(e.one_way);
    CHECK(e.reflector_synchronised);
  }
  platform::ClockStateCell::instance().assume(std::nullopt);
}

TEST_CASE("a probe without the clock extension keeps its padding, clock-sized or not") {
  RunningReflector r(loopback_config("127.0.0.1"));
  Peer peer("127.0.0.1");
  const Bytes request = probe(1, probes::kClockProbeSize + 10);
  peer.send(r.target("127.0.0.1"), request);
  const auto reply = peer.receive(kReplyTimeout);
  REQUIRE(reply.has_value());
  CHECK(std::equal(reply->begin() + kProbeHeaderSize, reply->end(), request.begin() + kProbeHeaderSize));
}
