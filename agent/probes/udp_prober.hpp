// The UDP prober: sends probes to reflectors at a jittered per-target rate, as Vantage echo
// (probe_packet.hpp) or as an RFC 8762 STAMP session-sender (stamp_packet.hpp) per target, and
// forwards one ProbeEvent per probe sent and per valid reply to a ring.
#pragma once

#include <sys/socket.h>
#include <asio/io_context.hpp>
#include <asio/ip/udp.hpp>

#include <array>
#include <chrono>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <vector>

#include "agent/probes/event_ring.hpp"
#include "agent/probes/probe_event.hpp"
#include "agent/probes/probe_packet.hpp"
#include "agent/probes/endpoint_table.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "agent/probes/schedule_timer.hpp"
#include "agent/probes/stamp_packet.hpp"
#include "platform/receive_batch.hpp"
#include "platform/rx_timestamp.hpp"
#include "platform/result.hpp"
#include "platform/spsc_ring.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

// What a target's datagrams are: Vantage echo probes, or STAMP test packets for any RFC 8762
// (or TWAMP-Light) reflector.
enum class UdpProbeFormat : std::uint8_t { kVantageEcho, kStamp };

// Whether a STAMP reflector numbers its replies per session (RFC 8762 §4.3 stateful), which
// tells forward from backward loss. kAuto: assumed stateless until a reply's reflector sequence
// number differs from the sender's (a stateful reflector that has missed a probe).
enum class StampStatefulReflector : std::uint8_t { kAuto, kYes, kNo };

struct StampSenderOptions {
  // RFC 8972 Session-Sender Identifier, 1..65535; 0: derived from the sender id and the target's
  // index (UdpProber::stamp_ssid).
  std::uint16_t ssid = 0;
  // HMAC-SHA-256 key, stamp::kMinKeySize..kMaxKeySize bytes: authenticated mode; empty:
  // unauthenticated mode.
  std::vector<std::byte> key;
  stamp::TimestampFormat timestamp_format = stamp::TimestampFormat::kNtp;
  StampStatefulReflector stateful_reflector = StampStatefulReflector::kAuto;

  stamp::Mode mode() const noexcept { return key.empty() ? stamp::Mode::kUnauthenticated : stamp::Mode::kAuthenticated; }
};

struct UdpProbeTarget {
  asio::ip::udp::endpoint endpoint;             // a reflector; IPv4 or IPv6
  std::uint32_t index = 0;                      // ProbeEvent::target: the agent's index of this target
  double rate_per_s = 1.0;                      // mean probes per second, > 0
  // Bytes of UDP payload, up to kMaxProbeSize: Vantage echo from kProbeHeaderSize, STAMP from
  // the mode's base size (44 or 112; the rest is zero padding).
  std::size_t payload_size = kProbeHeaderSize;
  std::uint8_t dscp = 0;                        // 0..63, written into the IP TOS / traffic class
  // How long a reply is awaited: a prober reading replies in batches wakes to read until then.
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);
  // Stop after this many probes (0: never). For one-shot measurements and tests.
  std::uint64_t count = 0;
  // False: a name without an address yet; not probed until set_address() gives it one.
  bool resolved = true;
  // ECMP paths, 1..kMaxPaths: probe seq goes out from the family's socket seq mod paths, so
  // consecutive probes leave from `paths` different source ports (and IPv6 flow labels).
  // STAMP: 1 (a reflector keeps one session per source port).
  std::uint32_t paths = 1;
  UdpProbeFormat format = UdpProbeFormat::kVantageEcho;
  StampSenderOptions stamp;  // format kStamp only
};

// The SSID a STAMP target without a configured one sends: a hash of the agent's sender id and
// the target's index, 1..65535, so restarts keep it and one agent's targets differ.
std::uint16_t stamp_ssid(std::uint64_t sender_id, std::uint32_t index) noexcept;

// The most source ports one target rotates over; the prober opens at most this many sockets
// per address family, shared by all targets.
inline constexpr std::uint32_t kMaxUdpPaths = 64;

struct UdpProberConfig {
  std::vector<UdpProbeTarget> targets;
  // Carried in every probe: the reflector keys its session counters on (source, sender_id),
  // and replies carrying another sender id are not ours.
  std::uint64_t sender_id = 0;
  // Ask the kernel for receive timestamps (SO_TIMESTAMPNS); off forces the user-space path.
  bool kernel_timestamps = true;
  // Seeds the send-time jitter; 0 takes one from the kernel's entropy pool so that agents
  // started together still drift apart. Tests fix it to make schedules reproducible.
  std::uint64_t jitter_seed = 0;
  // The slot grid probes are sent on (slot_ns is lowered to a quarter of the shortest probe
  // interval); the measurement gives all its probers one grid.
  SlotGrid grid;
  // Every target's first sequence number (tests of the STAMP sender's 32-bit wrap). At 0, a STAMP
  // target whose reflector's kind is detected (stateful_reflector auto) starts at a random
  // 32-bit number instead: a stateful reflector counts each session from 0, so its first reply
  // already differs from the sender's number and gives loss direction from the start (starting
  // at 0 too, the two agree until an outbound loss, which only inbound-lossy paths never have).
  std::uint64_t first_seq = 0;
};

// A snapshot; each field is individually exact, the set is not one atomic cut. Once idle,
// every datagram read is counted in received and in exactly one of replies or dropped_*.
struct UdpProberCounters {
  std::uint64_t sent = 0;
  std::uint64_t send_errors = 0;        // sendto failed; a kSendError event was emitted
  std::uint64_t received = 0;           // datagrams read from the sockets
  std::uint64_t replies = 0;            // valid replies; a kReply event was emitted
  std::uint64_t dropped_foreign = 0;    // not our magic, or not from a configured target
  std::uint64_t dropped_malformed = 0;  // our magic but bad version/flags/reserved, or a request
  // Well-formed reply from a target, but with another sender id, a sequence number not yet
  // sent, a length other than the probe's, or arriving on another path's socket than its
  // probe left from: forged, stale or misrouted.
  std::uint64_t dropped_unexpected = 0;
  std::uint64_t invalid_dwell = 0;   // reflector tx < rx or dwell > RTT: dwell reported as 0
  std::uint64_t receive_errors = 0;  // recvmsg failed with something other than EAGAIN
  std::uint64_t dscp_errors = 0;     // the socket refused the target's DSCP; sent unmarked
  std::uint64_t events_dropped = 0;  // the ring was full
  // STAMP, authenticated mode: a reply from a target shorter than 112 bytes or whose HMAC does
  // not verify with the target's key.
  std::uint64_t dropped_auth = 0;
};

// Thread contract: as the Reflector's. start(), the handlers and stop()'s posted work run on
// the io_context's thread, which is also the ring's only producer. stop(), counters() and the
// const accessors may be called from any thread once start() has returned. Destroy it only
// once the io_context no longer runs its handlers.
//
// Sockets: per address family in use, a pool of unconnected sockets bound to ephemeral ports
// and shared by all targets of that family: as many as the most paths any target has (one
// without ECMP targets), so a prober with a thousand targets of 64 paths holds 128 file
// descriptors. Path i of every target is socket i of its family; probe seq of a target with K
// paths leaves from socket seq mod K, so ECMP hashing (ports, IPv6 flow label) sees K flows.
// IPv6 sockets ask for the kernel's automatic flow label (IPV6_AUTOFLOWLABEL), a hash of
// the flow that differs with the source port. Replies are matched to a target by their source
// endpoint (a reflector answers from the address and port it was probed on), then checked
// against sender id, sequence numbers sent so far, probe length and the path: a reply must
// arrive on the socket its probe left from. DSCP is set per send with setsockopt, only when it
// differs from the socket's current marking.
//
// Scheduling: one timer for all targets over a ProbeSchedule (as the TCP and ICMP probers),
// woken on the slot grid. Each target starts at a random phase within its first interval, and
// every gap is the mean interval times uniform[0.5, 1.5), so a fleet started together never
// probes in step. Deadlines advance from the previous deadline, not from when the timer fired,
// so sending at the next slot boundary delays one probe without lowering the rate.
//
// Reading: a socket whose datagrams carry kernel receive timestamps is read in batches
// (recvmmsg) at the prober's wakeups, not on every arrival: the stamp says when a reply came
// however late it is read. While probes await replies with nothing due to send, the timer also
// wakes to read (ReplyWait). A socket without kernel stamps (QEMU user mode, the option off)
// is read as each reply arrives, as accuracy requires there; after stop_sending() every socket
// is, so that the replies in flight are forwarded promptly. Replies are matched to their target
// by a hash of the sender's address and port.
//
// Timestamps: send_ns is CLOCK_MONOTONIC read right before sendto and is carried in the probe.
// receive_ns is the kernel's SO_TIMESTAMPNS stamp when the socket accepts the option.
// That stamp is CLOCK_REALTIME; it is moved to CLOCK_MONOTONIC with realtime - monotonic
// sampled right after the datagram is read, bracketing the realtime read between two
// monotonic reads. The error is half that bracket (well under a microsecond with the vDSO)
// plus the NTP slew accrued while the datagram sat in the socket (at most 500 ppm of a queue
// time of microseconds). A realtime step between arrival and read could move the stamp
// outside [send_ns, read time] or more than platform::kMaxRxStampAgeNs before the read; such a
// stamp is replaced by the monotonic read time (platform/rx_timestamp.hpp, as everywhere). Without
// the option (QEMU user mode), receive_ns is CLOCK_MONOTONIC read after recvmsg returns.
// One-way delay: a Vantage echo probe of at least kClockProbeSize bytes carries the clock
// extension (probe_packet.hpp: CLOCK_REALTIME at send, this host's Error Estimate), and a reply
// whose reflector filled it gets the one-way fields, its arrival in CLOCK_REALTIME being the
// kernel's stamp itself or the read time plus the realtime - monotonic offset taken with it.
//
// STAMP (format kStamp, RFC 8762 session-sender): the same sockets, schedule and matching by
// source endpoint; the packet carries the low 32 bits of the target's seq, CLOCK_REALTIME in the
// target's timestamp format and this host's Error Estimate (ClockStateCell), plus an HMAC in
// authenticated mode; a payload above the base size ends in an Extra Padding TLV (RFC 8972; zero
// padding when 1..3 bytes are left). A reply carries no monotonic send time, so its event has
// send_ns 0 and send_ns_from_slot set: the aggregator takes the time it recorded at kSent. Its
// 64-bit seq is the latest seq sent whose low 32 bits are the reply's Session-Sender Sequence
// Number. Unauthenticated replies are accepted from the 41-byte TWAMP-Light layout on (which has
// no SSID); a 44-byte or longer one carrying an SSID other than the target's is dropped as
// unexpected (SSID 0 is a plain RFC 8762 reflector's MBZ and accepted). Authenticated replies
// must be at least 112 bytes with a valid HMAC (dropped_auth otherwise). The reflector's
// sequence numbers give the loss direction once it is known to be stateful (configured, or a
// reply whose reflector seq differs from the sender seq): session_id 1, session_rx = its seq + 1;
// before that session_id 0 (no direction information). All four timestamps give one-way delay:
// the echoed sender timestamp, the reflector's receive and send timestamps, and the arrival in
// CLOCK_REALTIME (the kernel stamp itself, else a realtime read).
//
// Nothing is allocated per packet: probes are encoded into a buffer sized at start(),
// replies read into a fixed buffer, and Asio recycles the memory of the few outstanding
// handlers (one timer wait, one read wait per socket).
class UdpProber {
 public:
  UdpProber(asio::io_context& io, UdpProberConfig config, EventRing& events);
  ~UdpProber();

  UdpProber(const UdpProber&) = delete;
  UdpProber& operator=(const UdpProber&) = delete;

  // Validates the config (rates, sizes, DSCP, no endpoint twice), opens the sockets and
  // schedules the first probes. Errc::kInvalid names a bad target; Errc::kIo carries
  // the socket error.
  [[nodiscard]] platform::Status start();

  // Cancels the timer and closes the sockets on the io_context's thread; the prober then
  // leaves the io_context without work. Idempotent.
  void stop();

  // Sends no further probes but keeps the sockets open, so replies to the probes in flight
  // still arrive and are forwarded: a measurement ends with every probe answered or timed
  // out, not cut off. Posted to the io_context's thread like stop(); idempotent.
  void stop_sending();

  // Gives target `position` (in config.targets) a new address, or none (not probed meanwhile);
  // its sequence numbers continue, and replies still in flight from the old address are dropped
  // as foreign. A family without a socket yet gets one. Posted to the io_context's thread.
  // applied(probed), when given, runs on that thread once the change is made: false when the
  // target is not probed (no address, or one its socket cannot serve).
  void set_address(std::size_t position, std::optional<asio::ip::address> address,
                   std::function<void(bool probed)> applied = {});

  // True when every open socket accepted SO_TIMESTAMPNS. Valid after a successful start().
  bool kernel_timestamps() const noexcept { return kernel_timestamps_.load(std::memory_order_relaxed); }
  UdpProberCounters counters() const noexcept;

  // The local port path `path` of target `position` sends from, for its current address
  // family; 0 when that socket is not open (or out of range). Any thread.
  std::uint16_t path_source_port(std::size_t position, std::size_t path) const noexcept;

 private:
  // Single writer (the io_context thread), any reader.
  using Counter = platform::StatCounter;

  struct TargetState {
    UdpProbeTarget config;
    std::uint64_t first_seq = 0;   // config first_seq, or a STAMP target's random start
    std::uint64_t next_seq = 0;
    std::uint16_t ssid = 0;        // STAMP: the SSID sent (configured or derived)
    bool stamp_stateful = false;   // STAMP: the reflector is known to number per session
  };

  struct Socket {
    Socket(asio::io_context& io, std::uint16_t path_index) : socket(io), path(path_index) {}
    asio::ip::udp::socket socket;
    std::uint16_t path = 0;  // the path index of every probe sent from it
    bool kernel_timestamps = false;
    bool batched = false;  // read at wakeups (kernel stamps, still sending), not on arrival
    int dscp = 0;          // the marking currently set on the socket
  };

  // What the schedule timer calls on a wakeup to read the batched sockets.
  struct BatchedReads {
    UdpProber* prober;
    std::size_t read(std::int64_t now_ns);
    std::int64_t next_read(std::int64_t now_ns, std::size_t sent, std::size_t read);
  };

  using Pool = std::vector<std::unique_ptr<Socket>>;
  Pool& pool(bool v6) noexcept { return v6 ? v6_ : v4_; }
  // Opens the family's pool (pool_size_ sockets); on failure none stays open.
  std::error_code open_pool(bool v6);
  void close_pools();
  std::error_code open(Socket& s, bool v6);
  void arm_read(Socket& s);
  void on_readable(Socket& s);
  std::size_t read_batch(Socket& s);
  // realtime_offset: CLOCK_REALTIME - CLOCK_MONOTONIC around the read, for the wall-clock
  // arrival time (one-way delay).
  bool handle_reply(std::span<const std::byte> packet, const sockaddr_storage& peer, platform::RxTime rx,
                    std::int64_t realtime_offset, std::uint16_t path);
  bool handle_stamp_reply(std::span<const std::byte> packet, std::uint32_t position, platform::RxTime rx,
                          std::int64_t realtime_offset);
  // Writes target t's STAMP test packet for `seq` into the send buffer; returns its size and
  // sets send_ns (CLOCK_MONOTONIC, read right before the wall-clock timestamp).
  std::size_t encode_stamp(const TargetState& t, std::uint64_t seq, std::int64_t& send_ns);
  void arm_timer();
  void send_probe(TargetState& t, std::int64_t now_ns);
  void rebuild_endpoints();
  void emit(const ProbeEvent& event) noexcept;

  asio::io_context& io_;
  UdpProberConfig config_;
  EventRing& events_;
  Pool v4_;  // empty, or pool_size_ sockets, all open
  Pool v6_;
  std::size_t pool_size_ = 1;
  // The pools' local ports, for path_source_port() from other threads: [v6][path].
  std::array<std::array<std::atomic<std::uint16_t>, kMaxUdpPaths>, 2> ports_{};
  // Per target (config order): whether its current address is IPv6.
  std::unique_ptr<std::atomic<bool>[]> target_v6_;
  ScheduleTimer timer_;
  BatchedReads reads_{this};
  std::vector<TargetState> targets_;
  ProbeSchedule schedule_;  // parallel to targets_; a target is finished once its count is sent
  ReplyWait reply_wait_;    // parallel to targets_
  EndpointTable endpoints_;  // sender -> position in targets_
  bool stopping_ = false;
  bool sending_stopped_ = false;
  std::atomic<bool> kernel_timestamps_{false};

  // Send buffer of the largest configured probe; receive buffer one byte larger than the
  // largest probe so an oversized datagram shows up as too long, not cut to size.
  std::vector<std::byte> send_buffer_;
  std::vector<std::byte> receive_buffer_;
  sockaddr_storage peer_{};
  alignas(std::max_align_t) std::array<unsigned char, 128> control_{};
  platform::ReceiveBatch batch_;  // the batched sockets' reads

  Counter sent_, send_errors_, received_, replies_, dropped_foreign_, dropped_malformed_, dropped_unexpected_,
      invalid_dwell_, receive_errors_, dscp_errors_, events_dropped_, dropped_auth_;
};

}  // namespace vantage::agent::probes
