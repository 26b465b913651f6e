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
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "agent/probes/icmp_packet.hpp"
#include "agent/probes/event_ring.hpp"
#include "agent/probes/probe_event.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "agent/probes/schedule_timer.hpp"
#include "platform/receive_batch.hpp"
#include "platform/result.hpp"
#include "platform/rx_timestamp.hpp"
#include "platform/spsc_ring.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

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
  // False: a name without an address yet; not probed until set_address() gives it one.
  bool resolved = true;
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
  SlotGrid grid;                  // as UdpProberConfig::grid
  bool kernel_timestamps = true;  // SO_TIMESTAMPNS where the socket accepts it
  IcmpSocketOpener socket_opener = nullptr;  // nullptr: socket(2)
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

// Thread contract as for Reflector: start(), the handlers and the posted work of stop() and
// stop_sending() run on the io_context's thread; stop(), stop_sending(), counters() and
// socket_kind() may be called from any thread after start(). Destroy it only after stop()
// once the io_context has no more of its handlers to run (run() returned): pending operations
// keep their handler memory in the prober.
//
// Nothing is allocated per probe: one socket per address family and one schedule timer serve
// every target, requests are encoded into and replies and ICMP errors read from buffers sized
// at start(), and the three possible outstanding waits use handler memory owned by the prober.
//
// Sending and reading follow the UDP prober: probes go out on the slot grid, and a socket whose
// replies carry kernel receive timestamps is read in batches at the wakeups (ICMP errors from
// its error queue too) until stop_sending(), after which every socket is read on arrival.
class IcmpProber {
 public:
  IcmpProber(asio::io_context& io, IcmpProberConfig config, EventRing& ring);
  ~IcmpProber();

  IcmpProber(const IcmpProber&) = delete;
  IcmpProber& operator=(const IcmpProber&) = delete;

  // Validates the config, opens a socket for each family the targets use (ping socket first,
  // then raw, as the mode allows) and schedules the first probes. On failure nothing is left
  // open and the message (one line, Errc::kIo) names what to change (ping_group_range,
  // CAP_NET_RAW, the mode); a bad config is Errc::kInvalid.
  [[nodiscard]] platform::Status start();

  // Stops scheduling and closes the sockets on the io_context's thread. Idempotent.
  void stop();

  // Gives target `position` (in config.targets) a new address, or none (not probed meanwhile);
  // its sequence numbers continue. A family without a socket yet gets one (a name that resolved
  // to IPv6 late); if that fails, the target stays paused and the failure counts as a send error.
  // Posted to the io_context's thread; any thread.
  // applied(probed), when given, runs on that thread once the change is made: false when the
  // target is not probed (no address, or one its socket cannot serve).
  void set_address(std::size_t position, std::optional<asio::ip::address> address,
                   std::function<void(bool probed)> applied = {});

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

  platform::Status open_family(Family& family);
  void place(Target& target, const asio::ip::address& address);
  // What the schedule timer calls on a wakeup to read the batched sockets (as the UDP prober's).
  struct BatchedReads {
    IcmpProber* prober;
    std::size_t read(std::int64_t now_ns);
    std::int64_t next_read(std::int64_t now_ns, std::size_t sent, std::size_t read);
  };

  void arm_schedule();
  void send(Target& target, std::int64_t now_ns);
  void arm_receive(Family& family);
  void on_readable(Family& family);
  std::size_t read_batch(Family& family);
  bool on_receive_error(Family& family, int err);
  bool handle_reply(Family& family, std::span<const std::byte> packet, const sockaddr_storage& peer,
                    platform::RxTime rx);
  std::size_t drain_error_queue(Family& family);
  void handle_error(Family& family, const IcmpErrorReport& report, std::span<const std::byte> destination);
  void emit(const ProbeEvent& event) noexcept;

  asio::io_context& io_;
  IcmpProberConfig config_;
  EventRing& ring_;
  ScheduleTimer schedule_timer_;
  BatchedReads reads_{this};
  ReplyWait reply_wait_;          // parallel to targets_
  platform::ReceiveBatch batch_;  // the batched sockets' reads
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
