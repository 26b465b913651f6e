// STAMP test packets (RFC 8762, with the RFC 8972 SSID and TLVs): the session-sender and
// session-reflector layouts in unauthenticated and authenticated mode, their NTP and PTP
// timestamps, HMAC-SHA-256-128 and the TLV walk. Every field is read and written at a fixed
// offset with memcpy in network order: the bytes come from the network and are never cast.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vantage::agent::probes::stamp {

inline constexpr std::uint16_t kDefaultPort = 862;

// Base packet sizes; TLVs (RFC 8972) follow the base, after the HMAC in authenticated mode.
inline constexpr std::size_t kUnauthenticatedSize = 44;
inline constexpr std::size_t kAuthenticatedSize = 112;
// A TWAMP-Light (RFC 5357 §4.2.1) reflector answers with the unauthenticated reflector layout
// up to and including Sender TTL: a sender in unauthenticated mode accepts replies this long.
inline constexpr std::size_t kTwampLightReplySize = 41;
inline constexpr std::size_t kHmacSize = 16;
inline constexpr std::size_t kHmacOffset = kAuthenticatedSize - kHmacSize;  // 96
inline constexpr std::size_t kMinKeySize = 16;
inline constexpr std::size_t kMaxKeySize = 64;

enum class Mode : std::uint8_t { kUnauthenticated, kAuthenticated };
// The Error Estimate's Z bit (RFC 8186): 0 NTP 64-bit, 1 PTPv2 truncated.
enum class TimestampFormat : std::uint8_t { kNtp, kPtp };

constexpr std::size_t base_size(Mode m) noexcept {
  return m == Mode::kAuthenticated ? kAuthenticatedSize : kUnauthenticatedSize;
}

// Field offsets, one namespace per layout (RFC 8762 §4.2.1, §4.2.2, §4.3.1, §4.3.2; the SSID
// takes the first two octets of the MBZ that follows the Error Estimate, RFC 8972 §3).
namespace sender_unauth {
inline constexpr std::size_t kSeq = 0, kTimestamp = 4, kErrorEstimate = 12, kSsid = 14, kMbz = 16;
}
namespace sender_auth {
inline constexpr std::size_t kSeq = 0, kTimestamp = 16, kErrorEstimate = 24, kSsid = 26, kMbz = 28,
                             kHmac = 96;
}
namespace reflector_unauth {
inline constexpr std::size_t kSeq = 0, kTimestamp = 4, kErrorEstimate = 12, kSsid = 14,
                             kReceiveTimestamp = 16, kSenderSeq = 24, kSenderTimestamp = 28,
                             kSenderErrorEstimate = 36, kSenderTtl = 40;
}
namespace reflector_auth {
inline constexpr std::size_t kSeq = 0, kTimestamp = 16, kErrorEstimate = 24, kSsid = 26,
                             kReceiveTimestamp = 32, kSenderSeq = 48, kSenderTimestamp = 64,
                             kSenderErrorEstimate = 72, kSenderTtl = 80, kHmac = 96;
}

// Timestamps on the wire are the raw 64-bit field (NTP: 32-bit seconds since 1900 + 32-bit
// fraction; PTP truncated: 32-bit seconds since 1970 + 32-bit nanoseconds); the codec
// converts to and from CLOCK_REALTIME nanoseconds since 1970.
std::uint64_t ntp_from_realtime_ns(std::int64_t ns) noexcept;
std::int64_t realtime_ns_from_ntp(std::uint64_t ntp) noexcept;
std::uint64_t ptp_from_realtime_ns(std::int64_t ns) noexcept;
std::int64_t realtime_ns_from_ptp(std::uint64_t ptp) noexcept;
std::uint64_t wire_timestamp(std::int64_t realtime_ns, TimestampFormat f) noexcept;
std::int64_t realtime_ns_from_wire(std::uint64_t wire, TimestampFormat f) noexcept;

// The session-sender's test packet (base fields; TLVs and padding follow).
struct SenderPacket {
  std::uint32_t seq = 0;
  std::uint64_t timestamp = 0;       // raw wire value, format per the Error Estimate's Z bit
  std::uint16_t error_estimate = 0;  // raw; platform/clock_state.hpp decodes it
  std::uint16_t ssid = 0;
};

// The session-reflector's reply (base fields).
struct ReflectorPacket {
  std::uint32_t seq = 0;
  std::uint64_t timestamp = 0;
  std::uint16_t error_estimate = 0;
  std::uint16_t ssid = 0;
  std::uint64_t receive_timestamp = 0;
  std::uint32_t sender_seq = 0;
  std::uint64_t sender_timestamp = 0;
  std::uint16_t sender_error_estimate = 0;
  std::uint8_t sender_ttl = 255;
};

// Decoders check only the length (>= the base size; a reflector packet in unauthenticated mode
// also at >= kTwampLightReplySize) and return false when too short. MBZ fields are ignored on
// receipt (RFC 8762 §4.2.1: "MUST be ignored"). HMAC checking is separate (verify_hmac).
bool decode_sender(std::span<const std::byte> packet, Mode mode, SenderPacket& out) noexcept;
bool decode_reflector(std::span<const std::byte> packet, Mode mode, ReflectorPacket& out) noexcept;
// Encoders write the base (MBZ fields and the HMAC field zeroed) into out, which must hold
// base_size(mode) bytes (false otherwise); bytes after the base are left alone.
bool encode_sender(std::span<std::byte> out, Mode mode, const SenderPacket& p) noexcept;
bool encode_reflector(std::span<std::byte> out, Mode mode, const ReflectorPacket& p) noexcept;

// HMAC-SHA-256 truncated to 128 bits (RFC 8762 §4.4) over the packet's first 96 octets.
// The key is 16..64 bytes (a longer one is rejected: configuration validates it).
using Hmac = std::array<std::byte, kHmacSize>;
bool compute_hmac(std::span<const std::byte> key, std::span<const std::byte> packet, Hmac& out) noexcept;
// Writes the HMAC into packet[96..112); false when the packet is shorter than 112 bytes.
bool sign(std::span<std::byte> packet, std::span<const std::byte> key) noexcept;
// Constant-time comparison of the packet's HMAC field with the computed one.
bool verify_hmac(std::span<const std::byte> packet, std::span<const std::byte> key) noexcept;

// RFC 8972 §4: TLVs. Flags (first octet): U unrecognised, M malformed, I integrity failed.
inline constexpr std::uint8_t kTlvFlagU = 0x80;
inline constexpr std::uint8_t kTlvFlagM = 0x40;
inline constexpr std::uint8_t kTlvFlagI = 0x20;
inline constexpr std::size_t kTlvHeaderSize = 4;
inline constexpr std::uint8_t kTlvExtraPadding = 1;
inline constexpr std::uint8_t kTlvClassOfService = 4;
inline constexpr std::uint8_t kTlvHmac = 8;
inline constexpr std::uint16_t kClassOfServiceLength = 4;

struct Tlv {
  std::size_t offset = 0;  // of the TLV header, within the span walked
  std::uint8_t flags = 0;
  std::uint8_t type = 0;
  std::uint16_t length = 0;  // as on the wire
  // The value as far as it is present; shorter than length when malformed.
  std::span<const std::byte> value;
  bool malformed = false;  // the length overruns the packet, or a header is cut short
};

// Walks the TLVs in `tlvs` (the bytes after the base). next() returns false at the end;
// a TLV whose length overruns (or a trailing 1..3 bytes that cannot hold a header) is returned
// once with malformed = true, and ends the walk.
class TlvWalker {
 public:
  explicit TlvWalker(std::span<const std::byte> tlvs) noexcept : tlvs_(tlvs) {}
  bool next(Tlv& out) noexcept;

 private:
  std::span<const std::byte> tlvs_;
  std::size_t pos_ = 0;
  bool done_ = false;
};

// Writes a TLV header at out[0..4); false when out is shorter.
bool encode_tlv_header(std::span<std::byte> out, std::uint8_t flags, std::uint8_t type,
                       std::uint16_t length) noexcept;
// ORs flags into (or clears them from) the flags octet of the TLV whose header is at tlvs[offset].
// RFC 8972 §4: a sender sets U on every TLV; a reflector clears it on those it understands.
void add_tlv_flags(std::span<std::byte> tlvs, std::size_t offset, std::uint8_t flags) noexcept;
void clear_tlv_flags(std::span<std::byte> tlvs, std::size_t offset, std::uint8_t flags) noexcept;

// RFC 8972 §4.4 Class of Service TLV value (4 octets): DSCP1 (6 bits: the DSCP the reflector
// is asked to use), DSCP2 (6: the DSCP the reflector received), ECN (2: as received), RP (2:
// reverse path, 0 when the reflector used DSCP1), 16 reserved bits.
struct ClassOfService {
  std::uint8_t dscp1 = 0;
  std::uint8_t dscp2 = 0;
  std::uint8_t ecn = 0;
  std::uint8_t rp = 0;
};
bool decode_class_of_service(std::span<const std::byte> value, ClassOfService& out) noexcept;
bool encode_class_of_service(std::span<std::byte> value, const ClassOfService& cos) noexcept;

}  // namespace vantage::agent::probes::stamp
