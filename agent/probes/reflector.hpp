// The UDP echo reflector: answers peers' probes (probe_packet.hpp) on one address and port,
// from the address each probe was sent to, adding its receive and send times, and drops,
// counts and rate-limits everything else.
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
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "agent/probes/probe_packet.hpp"
#include "agent/probes/reflector_socket.hpp"
#include "agent/probes/source_table.hpp"
#include "agent/probes/token_bucket.hpp"
#include "platform/result.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

inline constexpr std::uint16_t kDefaultReflectorPort = 8627;

struct ReflectorConfig {
  // One socket per Reflector, of the bind address's family. "::" (the default) is a
  // dual-stack IPv6 socket with IPV6_V6ONLY off, so it also serves IPv4 (as ::ffff:a.b.c.d).
  // A specific address serves only its family: to answer on 192.0.2.1 and 2001:db8::1, run
  // two Reflectors on the same io_context.
  std::string bind_address = "::";
  std::uint16_t port = kDefaultReflectorPort;  // 0 picks an ephemeral port (tests)
  // Per source address: probes beyond this are dropped without a reply. The rate is per
  // address, not per port or sender id, so a host cannot widen its share by opening sockets.
  TokenBucketConfig rate_limit{.rate_per_s = 100, .burst = 20};
  std::size_t max_probe_size = kDefaultMaxProbeSize;  // kProbeHeaderSize..kMaxProbeSize
  // Tracked source addresses, and separately (address, sender id) sessions; the stalest
  // entry is evicted when full. Each costs a few dozen bytes.
  std::size_t max_sources = 1024;
  // Ask the kernel for receive timestamps (SO_TIMESTAMPNS); off forces the user-space path.
  bool kernel_timestamps = true;
  // Answer each probe from the address it was sent to (IP_PKTINFO / IPV6_PKTINFO). Probers
  // match replies by source endpoint, and on a host with several addresses a wildcard-bound
  // socket's plain sendto() lets routing pick the source, so a probe to a secondary address
  // (or 127.0.0.2) would be answered from the primary one and dropped as foreign. Off forces
  // the plain-sendto fallback.
  bool reply_from_destination = true;
};

// A snapshot; each field is individually exact, the set is not one atomic cut. Every
// datagram read is counted in received and in exactly one of the other fields, so once the
// reflector is idle: received == replied + dropped_* + send_errors.
struct ReflectorCounters {
  std::uint64_t received = 0;
  std::uint64_t replied = 0;
  std::uint64_t dropped_short = 0;         // shorter than the probe header
  std::uint64_t dropped_malformed = 0;     // our magic, but bad version, flags, reserved or size
  std::uint64_t dropped_foreign = 0;       // not our magic
  std::uint64_t dropped_rate_limited = 0;  // well-formed, but the source is over its rate
  std::uint64_t send_errors = 0;           // sendmsg failed (send buffer full, unreachable, ...)
  std::uint64_t receive_errors = 0;        // recvmsg failed with something other than EAGAIN
  std::uint64_t source_evictions = 0;      // rate-limit records recycled because the table was full
  // Part of replied: sent without a pinned source address, so from whichever one routing
  // picks. Non-zero when pktinfo is off or unsupported, a datagram arrived without it, or the
  // kernel refused the destination as a source (EINVAL: e.g. the address was just removed).
  std::uint64_t replied_unpinned = 0;
};

// Thread contract: start(), the handlers and stop()'s posted work run on the thread that runs
// the io_context (one thread per io_context, as everywhere in the agent). stop(), counters()
// and the const accessors may be called from any thread once start() has returned.
// Destroy it only once the io_context no longer runs its handlers (after stop() and run()
// returning, or with the io_context stopped): the pending wait and stop()'s work refer to it.
//
// Nothing is allocated per packet: the datagram is received into a buffer sized at
// construction, rewritten in place and sent back from it; the source tables are fixed; and
// Asio recycles the memory of the single outstanding async_wait handler.
class Reflector {
 public:
  Reflector(asio::io_context& io, ReflectorConfig config);
  ~Reflector();

  Reflector(const Reflector&) = delete;
  Reflector& operator=(const Reflector&) = delete;

  // Validates the config, opens and binds the socket and starts waiting for probes. Returns
  // Errc::kInvalid for a bad config or bind address, Errc::kIo with the socket error's text
  // (address in use, ...).
  [[nodiscard]] platform::Status start();

  // Closes the socket on the io_context's thread; the pending wait then completes with
  // operation_aborted and the Reflector leaves the io_context without work. Idempotent.
  void stop();

  // The bound endpoint (to read back an ephemeral port). Valid after a successful start().
  asio::ip::udp::endpoint local_endpoint() const;
  TimestampSource timestamp_source() const noexcept { return socket_.timestamp_source(); }
  // True while replies are sent from the probed address; false when the config turned it off,
  // the socket refused pktinfo, or the kernel rejected the first pinned reply (the fallback
  // is then plain sendto, see replied_unpinned). Valid after a successful start().
  bool replies_from_destination() const noexcept { return socket_.replies_from_destination(); }
  std::uint64_t boot_id() const noexcept { return boot_id_; }
  ReflectorCounters counters() const noexcept;

 private:
  struct Session {
    std::uint32_t id = 0;
    std::uint32_t rx = 0;
  };

  // Written only by the io_context thread and read by anyone.
  using Counter = platform::StatCounter;

  void handle_datagram(std::size_t size, bool truncated, std::uint64_t now_mono_ns,
                       std::optional<std::int64_t> kernel_rx_ns);

  ReflectorConfig config_;
  ReflectorSocket socket_;
  const std::uint64_t boot_id_;
  std::uint32_t next_session_id_ = 0;

  SourceRateLimiter rate_limiter_;
  SourceTable<Session> session_table_;

  // Receive buffer one byte larger than the largest accepted probe, so that an oversized
  // datagram shows up as too long instead of being silently cut to an acceptable size.
  std::vector<std::byte> buffer_;
  Counter received_, replied_, dropped_short_, dropped_malformed_, dropped_foreign_, dropped_rate_limited_,
      send_errors_, receive_errors_, replied_unpinned_;
};

}  // namespace vantage::agent::probes
