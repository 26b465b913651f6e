// The UDP socket a reflector answers on, shared by the Vantage echo reflector and the STAMP
// session-reflector: bind (dual-stack for "::"), kernel receive timestamps, the received
// datagram's destination (pktinfo) turned into the reply's pinned source address, optionally
// the received TTL/hop limit and TOS/traffic class, and the reply sent with that source.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <asio/io_context.hpp>
#include <asio/ip/udp.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "agent/probes/source_table.hpp"
#include "agent/probes/token_bucket.hpp"
#include "platform/random_seed.hpp"
#include "platform/result.hpp"

namespace vantage::agent::probes {

enum class TimestampSource : std::uint8_t {
  // SO_TIMESTAMPNS: the kernel stamps each datagram on arrival, in CLOCK_REALTIME. The send
  // time is then read from CLOCK_REALTIME too, right before sending, so dwell = tx - rx is a
  // difference within one clock. Converting to CLOCK_MONOTONIC would need a realtime/monotonic
  // offset sampled per packet, which adds its own jitter to a value the prober only ever
  // subtracts. A stamp after the tx read, or older than platform::kMaxRxStampAgeNs before it
  // (a realtime step in between: the rule every prober applies), is replaced by the tx read,
  // a dwell of 0 flagged as user space.
  kKernelRealtime,
  // The socket refused SO_TIMESTAMPNS (QEMU user mode does) or it was disabled: rx is read
  // from CLOCK_MONOTONIC after recvmsg returns, tx right before sending. The dwell then misses
  // the time the probe queued in the socket buffer.
  kUserMonotonic,
};

const char* to_string(TimestampSource source) noexcept;

struct ReflectorSocketOptions {
  std::string bind_address = "::";
  std::uint16_t port = 0;
  bool kernel_timestamps = true;
  bool reply_from_destination = true;
  // Report each datagram's TTL/hop limit and TOS/traffic class (IP_RECVTTL, IP_RECVTOS,
  // IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS), and allow a per-reply TOS.
  bool ip_header_info = false;
};

// One datagram as read, with what its control data said.
struct ReflectorDatagram {
  std::size_t size = 0;
  bool truncated = false;                     // longer than the buffer
  std::optional<std::int64_t> kernel_rx_ns;   // only with kernel timestamps on
  int ttl = -1;                               // TTL or hop limit; -1 when not reported
  int tos = -1;                               // TOS or traffic class (DSCP << 2 | ECN); -1 unknown
};

// The rate-limit key of a peer: IPv4 as ::ffff:a.b.c.d, the form a dual-stack socket reports
// it in, qualifier 0. False for a family other than IPv4 and IPv6.
bool source_key(const sockaddr_storage& peer, SourceKey& key) noexcept;

// The per-source-address rate limit both reflectors apply before any other per-source state:
// an over-rate or spoofing source cannot churn their session tables faster than its own rate.
class SourceRateLimiter {
 public:
  SourceRateLimiter(TokenBucketConfig config, std::size_t max_sources)
      : config_(config), table_(max_sources, platform::random_seed()) {}

  // False when the source (its address; the qualifier is ignored) is over its rate.
  bool try_take(SourceKey source, std::uint64_t now_mono_ns) noexcept {
    source.qualifier = 0;
    bool inserted = false;
    auto& limit = table_.find_or_insert(source, now_mono_ns, inserted);
    if (inserted) {
      limit.value.reset(config_, now_mono_ns);
      evictions_.store(table_.evictions(), std::memory_order_relaxed);
    }
    return limit.value.try_take(config_, now_mono_ns);
  }
  // Records recycled because the table was full; readable from any thread.
  const std::atomic<std::uint64_t>& evictions() const noexcept { return evictions_; }

 private:
  TokenBucketConfig config_;
  SourceTable<TokenBucket> table_;
  std::atomic<std::uint64_t> evictions_{0};
};

// Thread contract: everything but the atomic accessors runs on the io_context's thread.
class ReflectorSocket {
 public:
  explicit ReflectorSocket(asio::io_context& io) : socket_(io) {}

  // Opens, sets the options and binds. Errc::kInvalid for a bad address, kIo for socket errors.
  [[nodiscard]] platform::Status open(const ReflectorSocketOptions& options);

  // Once open: waits for datagrams and reads each into `buffer` and hands it to on_datagram
  // (with the CLOCK_MONOTONIC time of the read), up to a batch per wakeup so that a flood does
  // not starve other work on the io_context; on_receive_error counts failed reads. Both are
  // stored once: nothing is allocated per datagram.
  using DatagramHandler = std::function<void(const ReflectorDatagram&, std::uint64_t now_mono_ns)>;
  void serve(std::span<std::byte> buffer, DatagramHandler on_datagram, std::function<void()> on_receive_error);
  // Closes the socket on the io_context's thread; the pending wait then completes with
  // operation_aborted and serving ends. Idempotent.
  void stop();
  void close() noexcept;
  bool is_open() const noexcept { return socket_.is_open(); }
  asio::ip::udp::socket& socket() noexcept { return socket_; }
  asio::ip::udp::endpoint local_endpoint() const;

  TimestampSource timestamp_source() const noexcept {
    return timestamp_source_.load(std::memory_order_relaxed);
  }
  // See ReflectorConfig::reply_from_destination: false once the platform refused pktinfo.
  bool replies_from_destination() const noexcept {
    return replies_from_destination_.load(std::memory_order_relaxed);
  }

  enum class Receive : std::uint8_t { kDatagram, kWouldBlock, kError };
  // One non-blocking read into buffer; the sender is peer() until the next read.
  Receive receive(std::span<std::byte> buffer, ReflectorDatagram& out) noexcept;
  const sockaddr_storage& peer() const noexcept { return peer_; }

  enum class Sent : std::uint8_t { kPinned, kUnpinned, kFailed };
  // Sends packet to peer() from the address the last datagram was sent to, when known; tos >= 0
  // sets the reply's TOS/traffic class (needs ip_header_info).
  Sent send_reply(std::span<const std::byte> packet, int tos = -1) noexcept;

 private:
  void arm();
  void on_readable();

  asio::ip::udp::socket socket_;
  std::span<std::byte> buffer_;
  DatagramHandler on_datagram_;
  std::function<void()> on_receive_error_;
  bool stopping_ = false;
  bool ip_header_info_ = false;
  std::atomic<TimestampSource> timestamp_source_{TimestampSource::kUserMonotonic};
  std::atomic<bool> replies_from_destination_{false};
  // Set by the first reply the kernel sent with a pinned source: from then on an EINVAL is
  // about that one address, not the platform refusing pktinfo altogether.
  bool pinned_reply_sent_ = false;

  // Peer address and ancillary data of the datagram being handled, aligned as the kernel
  // requires for cmsghdr. The receive side holds a timestamp, a pktinfo and the TTL/TOS with
  // room to spare; the reply side the one pktinfo that pins the reply's source address, or
  // nothing (reply_pktinfo_len_ == 0), then an optional TOS.
  sockaddr_storage peer_{};
  socklen_t peer_len_ = 0;
  alignas(std::max_align_t) std::array<unsigned char, 256> control_{};
  static_assert(CMSG_SPACE(sizeof(timespec)) + CMSG_SPACE(sizeof(in6_pktinfo)) + 4 * CMSG_SPACE(sizeof(int)) <=
                256);
  alignas(std::max_align_t) std::array<unsigned char, CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(int))>
      reply_control_{};
  std::size_t reply_pktinfo_len_ = 0;
  bool peer_v4_ = false;  // IPv4 on the wire (an AF_INET peer or a v4-mapped one)
};

}  // namespace vantage::agent::probes
