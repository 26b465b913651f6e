// The UDP echo probe datagram shared by the prober and the reflector: a fixed little-endian
// header followed by padding, with an encoder and a validating decoder for untrusted bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "agent/probes/probe_event.hpp"

namespace vantage::agent::probes {

// Wire layout, version 1. Every field is little-endian (as the telemetry frame length is), is
// read and written byte by byte through memcpy, and sits at a fixed offset: nothing here
// depends on the host's alignment or struct padding, so x86_64, aarch64 and armhf agree.
//
//   offset size  field
//        0    4  magic            "VNTP" (bytes 56 4e 54 50)
//        4    1  version          1
//        5    1  flags            request: 0; reply: kFlagReply, plus kFlagKernelRxTimestamp
//        6    2  reserved         0; a non-zero value is malformed (room for version 2)
//        8    8  sequence         prober's per-target sequence number
//       16    8  sender_id        prober's identity (agent id), opaque to the reflector
//       24    8  send_ns          prober's send time, opaque to the reflector (any clock)
//       32    8  reflector_rx_ns  reply only: when the reflector received the probe
//       40    8  reflector_tx_ns  reply only: when the reflector sent the reply
//       48    8  reflector_boot   reply only: random id of the reflector instance
//       56    4  session_id       reply only: id of the reflector's (source address,
//                                 sender_id) session record; see below
//       60    4  session_rx       reply only: probes the reflector accepted in that
//                                 session, this one included
//       64  ...  padding          up to the size the prober asked for; ignored on decode
//
// reflector_rx_ns and reflector_tx_ns come from one clock (which one is reflector-private),
// so only their difference, the dwell time, means anything to the prober: RTT minus dwell
// is the network round trip. kFlagKernelRxTimestamp says the receive side was stamped by
// the kernel; without it the reflector stamped in user space after reading the datagram,
// which misses the time the probe waited in the socket queue.
//
// Loss direction: within one (reflector_boot, session_id) pair session_rx increases by one
// per probe the reflector accepted. Between two replies the prober sent
// (seq_b - seq_a) probes, the reflector got (rx_b - rx_a) of them, so
// (seq_b - seq_a) - (rx_b - rx_a) were lost on the way out and the rest of the missing
// replies on the way back. A change of reflector_boot (restart) or session_id (the record
// was evicted from the reflector's bounded table) restarts that baseline.
//
// The reply is the request rewritten in place: it has exactly the request's length and the
// prober's padding bytes are returned unchanged, so a reply never carries reflector memory
// and is never larger than the probe that caused it (no amplification).
//
// Clock extension (one-way delay), in the padding, so version 1 is unchanged and old peers are
// unaffected. A prober that wants one-way figures sends at least kClockProbeSize bytes and writes
//
//   offset size  field
//       64    4  marker               "VNCX" (bytes 56 4e 43 58)
//       68    1  ext_version          1
//       69    1  ext_flags            request: 0; a new reflector sets kClockExtFilled
//       70    2  sender_error         RFC 4656 Error Estimate of the prober's clock at send
//       72    8  sender_tx_wall_ns    prober's CLOCK_REALTIME send time (ns since the epoch)
//       80    8  reflector_rx_wall_ns reply only: CLOCK_REALTIME receive time (the kernel's
//                                     stamp when it had one)
//       88    8  reflector_tx_wall_ns reply only: CLOCK_REALTIME send time
//       96    2  reflector_error      reply only: the reflector's RFC 4656 Error Estimate
//       98    6  reserved             0
//
// An old reflector returns these bytes unchanged (ext_flags stays 0: the prober reports one-way
// as not measured); a new reflector fills the reply fields only when the marker is there, so the
// zero padding of an old prober is returned as it came. forward = reflector_rx - sender_tx and
// backward = prober's wall receive time - reflector_tx; each is only as good as the two clocks,
// which is what the two Error Estimates bound. The default UDP echo probe is kClockProbeSize
// bytes (kDefaultProbeSize) so one-way delay is measured unless a size below it is configured.

inline constexpr std::uint32_t kProbeMagic = 0x50544e56;  // "VNTP" as little-endian bytes
inline constexpr std::uint8_t kProbeVersion = 1;
inline constexpr std::size_t kProbeHeaderSize = 64;
inline constexpr std::size_t kClockExtensionSize = 40;
inline constexpr std::size_t kClockProbeSize = kProbeHeaderSize + kClockExtensionSize;
// The UDP echo payload when a target does not set one: room for the clock extension.
inline constexpr std::size_t kDefaultProbeSize = kClockProbeSize;
inline constexpr std::uint32_t kClockExtMagic = 0x58434e56;  // "VNCX" as little-endian bytes
inline constexpr std::uint8_t kClockExtVersion = 1;
inline constexpr std::uint8_t kClockExtFilled = 0x01;
// 1500-byte Ethernet MTU minus IPv4 (20) and UDP (8) headers; larger probes fragment.
inline constexpr std::size_t kDefaultMaxProbeSize = 1472;
// Jumbo frames (9000) minus IPv4 and UDP headers: the largest size either side accepts.
inline constexpr std::size_t kMaxProbeSize = 9000 - 28;

inline constexpr std::uint8_t kFlagReply = 0x01;
inline constexpr std::uint8_t kFlagKernelRxTimestamp = 0x02;
inline constexpr std::uint8_t kKnownFlags = kFlagReply | kFlagKernelRxTimestamp;

struct ProbeHeader {
  std::uint8_t flags = 0;
  std::uint64_t sequence = 0;
  std::uint64_t sender_id = 0;
  std::uint64_t send_ns = 0;
  std::uint64_t reflector_rx_ns = 0;
  std::uint64_t reflector_tx_ns = 0;
  std::uint64_t reflector_boot = 0;
  std::uint32_t session_id = 0;
  std::uint32_t session_rx = 0;

  bool is_reply() const noexcept { return (flags & kFlagReply) != 0; }

  friend bool operator==(const ProbeHeader&, const ProbeHeader&) = default;
};

enum class ProbeDecodeStatus : std::uint8_t {
  kOk,
  kTooShort,     // fewer than kProbeHeaderSize bytes
  kTooLong,      // more than the receiver's maximum probe size
  kBadMagic,     // not a Vantage probe at all (foreign traffic)
  kBadVersion,   // a Vantage probe of a version this build does not speak
  kBadFlags,     // unknown flag bits, or a request where a reply was expected (or vice versa)
  kBadReserved,  // reserved bytes not zero
};

enum class ProbeKind : std::uint8_t { kRequest, kReply };

const char* to_string(ProbeDecodeStatus status) noexcept;

// Our magic but not a probe this build accepts (a receiver counts it as malformed); kTooShort
// and kBadMagic are traffic that is not ours, or too short to tell.
constexpr bool is_malformed_probe(ProbeDecodeStatus status) noexcept {
  switch (status) {
    case ProbeDecodeStatus::kTooLong:
    case ProbeDecodeStatus::kBadVersion:
    case ProbeDecodeStatus::kBadFlags:
    case ProbeDecodeStatus::kBadReserved:
      return true;
    case ProbeDecodeStatus::kOk:
    case ProbeDecodeStatus::kTooShort:
    case ProbeDecodeStatus::kBadMagic:
      return false;
  }
  return false;
}

// Validates bytes as a probe of the expected kind and fills out on kOk (out is left
// untouched otherwise). max_size bounds the accepted datagram length. A reflector decodes
// with kRequest, so a reply aimed at it (for instance with the source address spoofed to be
// another reflector) is rejected instead of answered: two reflectors can never be made to
// bounce packets between each other.
ProbeDecodeStatus decode_probe(std::span<const std::byte> bytes, ProbeKind expected, ProbeHeader& out,
                               std::size_t max_size = kMaxProbeSize) noexcept;

// Writes a request (header.flags is ignored and written as 0; the reply fields as 0) into
// out[0, size), zero-filling the padding. Returns size, or 0 when size is below
// kProbeHeaderSize, above kMaxProbeSize or larger than out.
std::size_t encode_request(const ProbeHeader& header, std::span<std::byte> out, std::size_t size) noexcept;

// What the reflector adds to a request to turn it into a reply.
struct ReplyStamp {
  std::uint64_t rx_ns = 0;
  std::uint64_t tx_ns = 0;
  std::uint64_t boot = 0;
  std::uint32_t session_id = 0;
  std::uint32_t session_rx = 0;
  bool kernel_rx_timestamp = false;
};

// Turns a request that decode_probe accepted into its reply in place: sets the flags and
// writes the reflector fields; magic, version, sequence, sender_id, send_ns and padding are
// kept. packet.size() must be at least kProbeHeaderSize.
void stamp_reply(std::span<std::byte> packet, const ReplyStamp& stamp) noexcept;

// --- Clock extension (layout above) ---
//
// For the UDP prober's owner: the Vantage echo one-way path is three calls.
//   send:  after encode_request(), when the target's size >= kClockProbeSize:
//            write_clock_request(packet, platform::realtime_ns(),
//              platform::encode_error_estimate(platform::error_estimate_of(
//                  platform::ClockStateCell::instance().current())));
//   reply: after decode_probe() accepted it, with event.receive_ns set:
//            fill_one_way(event, packet, event.receive_ns + platform::realtime_offset_ns());
//          (leaves event.one_way false when the reply carries no reflector stamps).

// What the extension carries; reflected is false while the reflector has not filled it.
struct ClockExtension {
  std::uint16_t sender_error = 0;  // RFC 4656 Error Estimate bits
  std::int64_t sender_tx_ns = 0;   // CLOCK_REALTIME
  bool reflected = false;
  std::int64_t reflector_rx_ns = 0;  // CLOCK_REALTIME
  std::int64_t reflector_tx_ns = 0;  // CLOCK_REALTIME
  std::uint16_t reflector_error = 0;

  friend bool operator==(const ClockExtension&, const ClockExtension&) = default;
};

// Prober: asks for the reflector's clock stamps. false (nothing written) when the packet is
// smaller than kClockProbeSize.
bool write_clock_request(std::span<std::byte> packet, std::int64_t sender_tx_realtime_ns,
                         std::uint16_t sender_error_estimate) noexcept;

// Reflector: fills the reply fields when the request asks (marker and version present, not yet
// filled); returns whether it did. Nothing else of the packet is touched.
bool stamp_clock_reply(std::span<std::byte> packet, std::int64_t rx_realtime_ns, std::int64_t tx_realtime_ns,
                       std::uint16_t reflector_error_estimate) noexcept;

// The extension of a probe or reply, or nullopt when there is none (short, or no marker).
std::optional<ClockExtension> read_clock_extension(std::span<const std::byte> packet) noexcept;

// Prober: sets the one-way fields of a reply event (one_way, forward/backward_ns, both ends'
// synchronised flags and errors) from the reply's extension and this host's CLOCK_REALTIME
// receive time; leaves event.one_way false when the reflector did not fill the extension.
void fill_one_way(ProbeEvent& event, const ClockExtension& ext, std::int64_t receive_realtime_ns) noexcept;
void fill_one_way(ProbeEvent& event, std::span<const std::byte> reply, std::int64_t receive_realtime_ns) noexcept;

}  // namespace vantage::agent::probes
