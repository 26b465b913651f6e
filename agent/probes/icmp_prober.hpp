// ICMP/ICMPv6 echo prober: pings each target at a jittered rate through an unprivileged ping
// socket or a raw socket, and reports kSent/kReply events into the aggregator's ring, and
// kSendError for probes a router answered with destination unreachable or time exceeded.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "agent/probes/probe_event.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/rx_timestamp.hpp"
#include "platform/spsc_ring.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

class HandlerMemory;  // handler_memory.hpp

// Our payload: cookie (8) | send_ns (8) | target (4) | zero (4), then padding up to the size.
inline constexpr std::size_t kIcmpMinPayload = 24;
inline constexpr std::size_t kIcmpMaxPayload = 1452;  // fits a 1500-byte MTU over IPv6
inline constexpr std::size_t kIcmpHeaderSize = 8;
inline constexpr double kMaxIcmpRatePerS = 1000.0;

struct IcmpTarget {
  std::uint32_t target = 0;  // copied into every event (index into the agent's target list)
  asio::ip::address address;
  double rate_per_s = 1.0;  // > 0 and <= kMaxIcmpRatePerS
  // Not used by the prober (the aggregator decides loss from events); kept with the target so
  // one config record describes it for both.
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);
  std::size_t payload_size = 56;  // kIcmpMinPayload..kIcmpMaxPayload, as ping(8)'s default
  std::uint8_t dscp = 0;          // 0..63; targets sharing a family share a socket, so it is
                                  // set per send (IP_TOS / IPV6_TCLASS) only when it changes
};

enum class IcmpSocketMode : std::uint8_t {
  kAuto,   // ping socket, else raw socket, else start() fails
  kDgram,  // only SOCK_DGRAM/IPPROTO_ICMP(V6): needs the gid in net.ipv4.ping_group_range
  kRaw,    // only SOCK_RAW: needs CAP_NET_RAW
};

enum class IcmpSocketKind : std::uint8_t { kNone, kDgram, kRaw };

// socket(2) by default; tests inject one that refuses chosen kinds, to exercise the fallback
// order and the error message without changing sysctls or capabilities. Returns -1 with errno.
using IcmpSocketOpener = int (*)(int domain, int type, int protocol);

struct IcmpProberConfig {
  std::vector<IcmpTarget> targets;
  IcmpSocketMode mode = IcmpSocketMode::kAuto;
  double jitter = 0.1;            // as TcpProberConfig::jitter: gap = interval * (1 +- jitter), 0..0.5
  bool kernel_timestamps = true;  // SO_TIMESTAMPNS where the socket accepts it
  IcmpSocketOpener socket_opener = nullptr;  // nullptr: socket(2)
};

struct IcmpStartResult {
  std::error_code error;
  std::string message;  // one line for the operator when error is set
  bool ok() const noexcept { return !error; }
};

// A snapshot of monotonic statistics; each field is individually exact.
struct IcmpProberCounters {
  std::uint64_t sent = 0;
  std::uint64_t replies = 0;
  std::uint64_t send_errors = 0;  // sendto failed (kSendError emitted)
  // An ICMP destination unreachable, packet too big (IPv6) or time exceeded quoting one of our
  // probes (kSendError emitted for its seq).
  std::uint64_t unreachable = 0;
  // ICMP errors quoting an echo request of ours (our id or our ping socket) that cannot be tied
  // to a probe: a quote too short to hold the cookie (IPv4 routers need only quote 8 bytes),
  // an error-queue entry not from ICMP, or a seq, target or address that does not match.
  std::uint64_t unattributed_errors = 0;
  std::uint64_t dropped_foreign = 0;    // not an echo reply to this prober: type, id, cookie, source
  std::uint64_t dropped_malformed = 0;  // too short, bad IP header or checksum, impossible seq/time
  std::uint64_t receive_errors = 0;
  std::uint64_t ring_full = 0;
};

// ---- wire helpers, public for unit tests ----

enum class IcmpParseStatus : std::uint8_t {
  kOk,
  kTooShort,
  kMalformed,
  kNotEchoReply,
  kWrongId,
  kWrongCookie,
  kNotIcmpError,  // parse_icmp_error: not an error type we handle, or not about an echo request
  kShortQuote,    // an error quoting our echo request, but too little of it to hold our cookie
};

struct IcmpEchoReply {
  std::uint16_t id = 0;
  std::uint16_t wire_seq = 0;
  std::int64_t send_ns = 0;
  std::uint32_t target = 0;
};

// Writes an echo request (header + payload of payload_size bytes) into out and returns its
// length, or 0 if out is too small or payload_size < kIcmpMinPayload. The checksum is filled
// in for IPv4 (raw sockets need it; ping sockets recompute it); ICMPv6's covers a pseudo header
// the kernel always computes.
std::size_t encode_icmp_echo_request(std::span<std::byte> out, bool ipv6, std::uint16_t id,
                                     std::uint16_t wire_seq, std::uint64_t cookie, std::int64_t send_ns,
                                     std::uint32_t target, std::size_t payload_size) noexcept;

// Parses a received datagram as an echo reply carrying our cookie. with_ip_header: IPv4 raw
// sockets deliver the IP header too. check_id: raw sockets see every host's ICMP, while ping
// sockets only get replies to their own kernel-chosen id.
IcmpParseStatus parse_icmp_echo_reply(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                      bool check_id, std::uint16_t id, std::uint64_t cookie,
                                      IcmpEchoReply& out) noexcept;

// An ICMP error about one of our echo requests, from the part of the request it quotes.
struct IcmpErrorReport {
  std::uint8_t type = 0;  // ICMP(v6) type and code of the error
  std::uint8_t code = 0;
  std::uint16_t id = 0;
  std::uint16_t wire_seq = 0;
  std::int64_t send_ns = 0;
  std::uint32_t target = 0;
  // Destination of the quoted request (4 bytes for IPv4), from the quoted IP header; raw
  // sockets only, the error queue reports it as the message's address instead.
  std::array<std::byte, 16> destination{};
};

// Whether an ICMP(v6) type is one that says an echo request did not reach its target:
// destination unreachable (any code) and time exceeded, and for IPv6 packet too big (IPv4's
// counterpart is unreachable code 4). Redirects, parameter problems and the rest are not.
bool is_icmp_error_for_probe(bool ipv6, std::uint8_t type) noexcept;

// Parses the echo request quoted in an ICMP error (from its ICMP header on): our type, code 0,
// optionally our id, and the cookie; fills id, wire_seq, send_ns and target of out.
IcmpParseStatus parse_quoted_echo_request(std::span<const std::byte> quote, bool ipv6, bool check_id,
                                          std::uint16_t id, std::uint64_t cookie,
                                          IcmpErrorReport& out) noexcept;

// Parses an ICMP error as a raw socket receives it (IPv4: behind the IP header): an error type
// of is_icmp_error_for_probe, the quoted IP header (IPv4 with ICMP inside, or IPv6 with ICMPv6
// directly next) and a quoted echo request with our id and cookie. Every length is checked
// against the received size: nothing past `packet` is read.
IcmpParseStatus parse_icmp_error(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                 std::uint16_t id, std::uint64_t cookie, IcmpErrorReport& out) noexcept;

// Maps a 16-bit wire sequence back onto the 64-bit per-target counter, given how many probes
// were sent (next_seq): the latest sent seq with those low 16 bits. False if no sent probe has
// them (nothing sent yet, or the value predates the first probe).
bool unwrap_icmp_sequence(std::uint64_t next_seq, std::uint16_t wire_seq, std::uint64_t& seq) noexcept;

// Thread contract as for Reflector: start(), the handlers and the posted work of stop() and
// stop_sending() run on the io_context's thread; stop(), stop_sending(), counters() and
// socket_kind() may be called from any thread after start(). Destroy it only after stop()
// once the io_context has no more of its handlers to run (run() returned): pending operations
// keep their handler memory in the prober.
//
// Nothing is allocated per probe: one socket per address family and one schedule timer serve
// every target, requests are encoded into and replies and ICMP errors read from buffers sized
// at start(), and the three possible outstanding waits use handler memory owned by the prober.
class IcmpProber {
 public:
  IcmpProber(asio::io_context& io, IcmpProberConfig config, platform::SpscRing<ProbeEvent>& ring);
  ~IcmpProber();

  IcmpProber(const IcmpProber&) = delete;
  IcmpProber& operator=(const IcmpProber&) = delete;

  // Validates the config, opens a socket for each family the targets use (ping socket first,
  // then raw, as the mode allows) and schedules the first probes. On failure nothing is left
  // open and message names what to change (ping_group_range, CAP_NET_RAW, the mode).
  [[nodiscard]] IcmpStartResult start();

  // Stops scheduling and closes the sockets on the io_context's thread. Idempotent.
  void stop();

  // Sends no further probes but keeps the sockets open, so replies (and ICMP errors) for the
  // probes in flight still arrive and are forwarded: a measurement ends with every probe
  // answered or timed out, not cut off. Posted to the io_context's thread like stop();
  // idempotent, and stop() still closes everything afterwards.
  void stop_sending();

  // Which kind of socket IPv4 / IPv6 probing uses (kNone if no target has that family).
  IcmpSocketKind socket_kind(bool ipv6) const noexcept {
    return (ipv6 ? kind_v6_ : kind_v4_).load(std::memory_order_relaxed);
  }
  // Whether replies on that family carry kernel receive timestamps.
  bool kernel_timestamps(bool ipv6) const noexcept {
    return (ipv6 ? kernel_ts_v6_ : kernel_ts_v4_).load(std::memory_order_relaxed);
  }
  IcmpProberCounters counters() const noexcept;

 private:
  struct Target;
  struct Family;

  // Single writer (the io_context thread), any reader.
  using Counter = platform::StatCounter;

  IcmpStartResult open_family(Family& family);
  void arm_schedule();
  void send(Target& target);
  void arm_receive(Family& family);
  void on_readable(Family& family);
  void handle_reply(Family& family, std::size_t size, platform::RxTime rx);
  std::size_t drain_error_queue(Family& family);
  void handle_error(Family& family, const IcmpErrorReport& report, std::span<const std::byte> destination);
  void emit(const ProbeEvent& event) noexcept;

  asio::io_context& io_;
  IcmpProberConfig config_;
  platform::SpscRing<ProbeEvent>& ring_;
  asio::steady_timer schedule_timer_;
  std::unique_ptr<HandlerMemory> schedule_memory_;
  std::unique_ptr<Family> v4_;
  std::unique_ptr<Family> v6_;
  std::vector<Target> targets_;
  ProbeSchedule schedule_;  // parallel to targets_
  std::uint64_t cookie_;
  bool stopping_ = false;
  bool sending_stopped_ = false;

  std::atomic<IcmpSocketKind> kind_v4_{IcmpSocketKind::kNone};
  std::atomic<IcmpSocketKind> kind_v6_{IcmpSocketKind::kNone};
  std::atomic<bool> kernel_ts_v4_{false};
  std::atomic<bool> kernel_ts_v6_{false};

  Counter sent_, replies_, send_errors_, unreachable_, unattributed_errors_, dropped_foreign_,
      dropped_malformed_, receive_errors_, ring_full_;
};

}  // namespace vantage::agent::probes
