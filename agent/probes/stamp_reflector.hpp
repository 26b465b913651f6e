// The STAMP session-reflector (RFC 8762, RFC 8972 SSID and Class of Service TLVs): answers
// session-senders and TWAMP-Light senders on its own port beside the Vantage echo reflector, in
// unauthenticated or authenticated mode per source, stateless or stateful, with the host's
// clock quality as Error Estimate, never more bytes than were received.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/udp.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/probes/reflector_socket.hpp"
#include "agent/probes/source_table.hpp"
#include "agent/probes/stamp_packet.hpp"
#include "agent/probes/token_bucket.hpp"
#include "platform/result.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

// An address prefix in IPv6 form (IPv4 as ::ffff:a.b.c.d/96+len), as SourceKey holds addresses.
struct AddressPrefix {
  std::array<std::uint8_t, 16> address{};
  unsigned length = 0;  // 0..128

  // "192.0.2.0/24", "2001:db8::/32", or an address alone (a host). Empty when malformed.
  static std::optional<AddressPrefix> parse(std::string_view text);
  bool contains(const std::array<std::uint8_t, 16>& a) const noexcept;
};

// Sources inside `peers` must send authenticated packets signed with `key`.
struct StampKey {
  std::vector<AddressPrefix> peers;
  std::vector<std::byte> key;  // stamp::kMinKeySize..kMaxKeySize bytes
};

struct StampReflectorConfig {
  std::string bind_address = "::";       // as ReflectorConfig: "::" is dual-stack
  std::uint16_t port = stamp::kDefaultPort;  // 0: ephemeral (tests)
  // Stateful: the reply's sequence number counts the replies of that session (source address,
  // port and SSID) from 0, so a sender tells outbound from inbound loss. Stateless: it is the
  // sender's own.
  bool stateful = true;
  stamp::TimestampFormat timestamp_format = stamp::TimestampFormat::kNtp;
  TokenBucketConfig rate_limit{.rate_per_s = 100, .burst = 20};
  // Answer unauthenticated packets from sources no key's peers cover.
  bool unauthenticated = true;
  std::vector<StampKey> keys;  // the first whose peers cover a source applies
  // Tracked sources, and separately sessions; the stalest entry is evicted when full.
  std::size_t max_sources = 1024;
  // Largest datagram answered (base, TLVs and padding); longer ones are dropped as malformed.
  std::size_t max_packet_size = 9000;
  bool kernel_timestamps = true;
  bool reply_from_destination = true;
};

// Snapshot, as ReflectorCounters: once idle, received == replied + dropped_* + send_errors.
struct StampReflectorCounters {
  std::uint64_t received = 0;
  std::uint64_t replied = 0;
  std::uint64_t dropped_short = 0;         // shorter than the 44 or 112-byte base
  // Longer than max_packet_size, an unknown address family, or sent from the reflector's own
  // port: STAMP cannot tell a reply from a request, so a request spoofed from another reflector's
  // address and port would start two reflectors answering each other. One on the same port (862
  // everywhere) is refused; between different ports the per-source rate limit bounds the loop.
  std::uint64_t dropped_malformed = 0;
  std::uint64_t dropped_auth = 0;          // wrong HMAC, or unauthenticated from a source not served so
  std::uint64_t dropped_rate_limited = 0;  // the source is over its rate
  std::uint64_t send_errors = 0;
  std::uint64_t receive_errors = 0;
  std::uint64_t source_evictions = 0;      // rate-limit records recycled because the table was full
  std::uint64_t session_evictions = 0;     // stateful sessions recycled because the table was full
  std::uint64_t replied_unpinned = 0;      // part of replied: sent without a pinned source address
  std::uint64_t replied_authenticated = 0;  // part of replied
  std::uint64_t tlvs_unrecognised = 0;     // TLVs returned with the U flag
  std::uint64_t tlvs_malformed = 0;        // TLVs returned with the M flag
};

// Thread contract and lifetime as Reflector's. Nothing is allocated per packet: the request is
// rewritten into the reply in place, in a buffer sized at construction.
class StampReflector {
 public:
  StampReflector(asio::io_context& io, StampReflectorConfig config);
  ~StampReflector();

  StampReflector(const StampReflector&) = delete;
  StampReflector& operator=(const StampReflector&) = delete;

  // Errc::kInvalid for a bad config or bind address, Errc::kIo with the socket error's text.
  [[nodiscard]] platform::Status start();
  void stop();

  asio::ip::udp::endpoint local_endpoint() const;
  TimestampSource timestamp_source() const noexcept { return socket_.timestamp_source(); }
  StampReflectorCounters counters() const noexcept;

 private:
  struct Session {
    std::uint32_t next_seq = 0;
  };
  using Counter = platform::StatCounter;

  void handle_datagram(const ReflectorDatagram& d, std::uint64_t now_mono_ns);
  // The key that applies to the source, nullptr when none does.
  const StampKey* key_for(const SourceKey& source) const noexcept;
  // Marks the request's TLVs for the reply; returns the TOS to send with (-1: default).
  int reflect_tlvs(std::span<std::byte> tlvs, int received_tos) noexcept;

  StampReflectorConfig config_;
  ReflectorSocket socket_;
  SourceRateLimiter rate_limiter_;
  SourceTable<Session> session_table_;
  std::vector<std::byte> buffer_;  // max_packet_size + 1: an oversized datagram shows as such
  std::uint16_t local_port_ = 0;   // the bound port, for the loop check

  Counter received_, replied_, dropped_short_, dropped_malformed_, dropped_auth_, dropped_rate_limited_,
      send_errors_, receive_errors_;
  std::atomic<std::uint64_t> session_evictions_{0};
  Counter replied_unpinned_, replied_authenticated_, tlvs_unrecognised_, tlvs_malformed_;
};

}  // namespace vantage::agent::probes
