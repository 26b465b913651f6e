#include "agent/probes/stamp_packet.hpp"

#include <mbedtls/md.h>
// mbedTLS 3.6's constant_time.h lacks the C++ linkage guard its other headers have.
extern "C" {
#include <mbedtls/constant_time.h>
}

#include <algorithm>
#include <cstring>

#include "platform/byte_order.hpp"

namespace vantage::agent::probes::stamp {
namespace {

constexpr std::int64_t kNsPerS = 1'000'000'000;
// Seconds from the NTP epoch (1900-01-01) to the Unix epoch.
constexpr std::int64_t kNtpUnixOffsetS = 2'208'988'800;

void zero(std::span<std::byte> out, std::size_t offset, std::size_t n) noexcept {
  std::memset(out.data() + offset, 0, n);
}

// Splits ns since 1970 into whole seconds and a non-negative remainder (floor division).
void split(std::int64_t ns, std::int64_t& s, std::int64_t& rem) noexcept {
  s = ns / kNsPerS;
  rem = ns % kNsPerS;
  if (rem < 0) {
    rem += kNsPerS;
    --s;
  }
}

}  // namespace

std::uint64_t ntp_from_realtime_ns(std::int64_t ns) noexcept {
  std::int64_t s = 0;
  std::int64_t rem = 0;
  split(ns, s, rem);
  // Round to the nearest fraction unit (2^-32 s, finer than a ns, so the round trip is exact).
  std::uint64_t frac = ((static_cast<std::uint64_t>(rem) << 32) + kNsPerS / 2) / kNsPerS;
  if (frac > 0xffff'ffffU) {
    frac = 0xffff'ffffU;
  }
  // Seconds wrap modulo 2^32: era 1 starts in 2036 (RFC 5905 §6).
  const auto sec = static_cast<std::uint32_t>(static_cast<std::uint64_t>(s + kNtpUnixOffsetS));
  return (static_cast<std::uint64_t>(sec) << 32) | frac;
}

std::int64_t realtime_ns_from_ntp(std::uint64_t ntp) noexcept {
  auto s = static_cast<std::int64_t>(ntp >> 32);
  // Seconds below 2^31 (before 1968) are read as era 1 (2036..2104), as SNTP does (RFC 4330 §3).
  if (s < (std::int64_t{1} << 31)) {
    s += std::int64_t{1} << 32;
  }
  const std::uint64_t frac = ntp & 0xffff'ffffU;
  const auto ns = static_cast<std::int64_t>((frac * kNsPerS + (std::uint64_t{1} << 31)) >> 32);
  return (s - kNtpUnixOffsetS) * kNsPerS + ns;
}

std::uint64_t ptp_from_realtime_ns(std::int64_t ns) noexcept {
  std::int64_t s = 0;
  std::int64_t rem = 0;
  split(ns, s, rem);
  const auto sec = static_cast<std::uint32_t>(static_cast<std::uint64_t>(s));
  return (static_cast<std::uint64_t>(sec) << 32) | static_cast<std::uint64_t>(rem);
}

std::int64_t realtime_ns_from_ptp(std::uint64_t ptp) noexcept {
  const auto s = static_cast<std::int64_t>(ptp >> 32);
  const auto ns = static_cast<std::int64_t>(ptp & 0xffff'ffffU);
  return s * kNsPerS + ns;
}

std::uint64_t wire_timestamp(std::int64_t realtime_ns, TimestampFormat f) noexcept {
  return f == TimestampFormat::kPtp ? ptp_from_realtime_ns(realtime_ns) : ntp_from_realtime_ns(realtime_ns);
}

std::int64_t realtime_ns_from_wire(std::uint64_t wire, TimestampFormat f) noexcept {
  return f == TimestampFormat::kPtp ? realtime_ns_from_ptp(wire) : realtime_ns_from_ntp(wire);
}

namespace {

// Each layout's offsets (stamp_packet.hpp), so one codec serves both modes.
struct SenderLayout {
  std::size_t seq, timestamp, error_estimate, ssid;
};
struct ReflectorLayout {
  std::size_t seq, timestamp, error_estimate, ssid, receive_timestamp, sender_seq, sender_timestamp,
      sender_error_estimate, sender_ttl;
};

constexpr SenderLayout sender_layout(Mode mode) noexcept {
  if (mode == Mode::kAuthenticated) {
    using namespace sender_auth;
    return {kSeq, kTimestamp, kErrorEstimate, kSsid};
  }
  using namespace sender_unauth;
  return {kSeq, kTimestamp, kErrorEstimate, kSsid};
}

constexpr ReflectorLayout reflector_layout(Mode mode) noexcept {
  if (mode == Mode::kAuthenticated) {
    using namespace reflector_auth;
    return {kSeq,      kTimestamp,       kErrorEstimate,       kSsid,     kReceiveTimestamp,
            kSenderSeq, kSenderTimestamp, kSenderErrorEstimate, kSenderTtl};
  }
  using namespace reflector_unauth;
  return {kSeq,      kTimestamp,       kErrorEstimate,       kSsid,     kReceiveTimestamp,
          kSenderSeq, kSenderTimestamp, kSenderErrorEstimate, kSenderTtl};
}

}  // namespace

bool decode_sender(std::span<const std::byte> packet, Mode mode, SenderPacket& out) noexcept {
  if (packet.size() < base_size(mode)) {
    return false;
  }
  const std::byte* p = packet.data();
  const SenderLayout at = sender_layout(mode);
  out.seq = platform::load_be32(p + at.seq);
  out.timestamp = platform::load_be64(p + at.timestamp);
  out.error_estimate = platform::load_be16(p + at.error_estimate);
  out.ssid = platform::load_be16(p + at.ssid);
  return true;
}

bool decode_reflector(std::span<const std::byte> packet, Mode mode, ReflectorPacket& out) noexcept {
  const std::size_t min = mode == Mode::kAuthenticated ? kAuthenticatedSize : kTwampLightReplySize;
  if (packet.size() < min) {
    return false;
  }
  const std::byte* p = packet.data();
  const ReflectorLayout at = reflector_layout(mode);
  out.seq = platform::load_be32(p + at.seq);
  out.timestamp = platform::load_be64(p + at.timestamp);
  out.error_estimate = platform::load_be16(p + at.error_estimate);
  // A TWAMP-Light reflector leaves the SSID's octets MBZ: an SSID of 0 then.
  out.ssid = platform::load_be16(p + at.ssid);
  out.receive_timestamp = platform::load_be64(p + at.receive_timestamp);
  out.sender_seq = platform::load_be32(p + at.sender_seq);
  out.sender_timestamp = platform::load_be64(p + at.sender_timestamp);
  out.sender_error_estimate = platform::load_be16(p + at.sender_error_estimate);
  out.sender_ttl = static_cast<std::uint8_t>(p[at.sender_ttl]);
  return true;
}

bool encode_sender(std::span<std::byte> out, Mode mode, const SenderPacket& s) noexcept {
  const std::size_t size = base_size(mode);
  if (out.size() < size) {
    return false;
  }
  zero(out, 0, size);
  std::byte* p = out.data();
  const SenderLayout at = sender_layout(mode);
  platform::store_be32(p + at.seq, s.seq);
  platform::store_be64(p + at.timestamp, s.timestamp);
  platform::store_be16(p + at.error_estimate, s.error_estimate);
  platform::store_be16(p + at.ssid, s.ssid);
  return true;
}

bool encode_reflector(std::span<std::byte> out, Mode mode, const ReflectorPacket& r) noexcept {
  const std::size_t size = base_size(mode);
  if (out.size() < size) {
    return false;
  }
  zero(out, 0, size);
  std::byte* p = out.data();
  const ReflectorLayout at = reflector_layout(mode);
  platform::store_be32(p + at.seq, r.seq);
  platform::store_be64(p + at.timestamp, r.timestamp);
  platform::store_be16(p + at.error_estimate, r.error_estimate);
  platform::store_be16(p + at.ssid, r.ssid);
  platform::store_be64(p + at.receive_timestamp, r.receive_timestamp);
  platform::store_be32(p + at.sender_seq, r.sender_seq);
  platform::store_be64(p + at.sender_timestamp, r.sender_timestamp);
  platform::store_be16(p + at.sender_error_estimate, r.sender_error_estimate);
  p[at.sender_ttl] = static_cast<std::byte>(r.sender_ttl);
  return true;
}

bool compute_hmac(std::span<const std::byte> key, std::span<const std::byte> packet, Hmac& out) noexcept {
  if (key.size() < kMinKeySize || key.size() > kMaxKeySize || packet.size() < kHmacOffset) {
    return false;
  }
  const mbedtls_md_info_t* info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
  std::array<unsigned char, 32> full{};
  if (info == nullptr ||
      mbedtls_md_hmac(info, reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                      reinterpret_cast<const unsigned char*>(packet.data()), kHmacOffset, full.data()) != 0) {
    return false;
  }
  std::memcpy(out.data(), full.data(), kHmacSize);
  return true;
}

bool sign(std::span<std::byte> packet, std::span<const std::byte> key) noexcept {
  Hmac mac{};
  if (packet.size() < kAuthenticatedSize || !compute_hmac(key, packet, mac)) {
    return false;
  }
  std::memcpy(packet.data() + kHmacOffset, mac.data(), kHmacSize);
  return true;
}

bool verify_hmac(std::span<const std::byte> packet, std::span<const std::byte> key) noexcept {
  Hmac mac{};
  if (packet.size() < kAuthenticatedSize || !compute_hmac(key, packet, mac)) {
    return false;
  }
  // Constant time: the reflector must not tell an attacker how many leading bytes were right.
  return mbedtls_ct_memcmp(mac.data(), packet.data() + kHmacOffset, kHmacSize) == 0;
}

bool TlvWalker::next(Tlv& out) noexcept {
  if (done_ || pos_ >= tlvs_.size()) {
    return false;
  }
  out = Tlv{};
  out.offset = pos_;
  const std::size_t left = tlvs_.size() - pos_;
  const std::byte* p = tlvs_.data() + pos_;
  if (left < kTlvHeaderSize) {
    // Trailing bytes that cannot hold a header.
    out.flags = static_cast<std::uint8_t>(p[0]);
    out.type = left > 1 ? static_cast<std::uint8_t>(p[1]) : 0;
    out.value = tlvs_.subspan(pos_ + std::min<std::size_t>(left, 2), 0);
    out.malformed = true;
    done_ = true;
    return true;
  }
  out.flags = static_cast<std::uint8_t>(p[0]);
  out.type = static_cast<std::uint8_t>(p[1]);
  out.length = platform::load_be16(p + 2);
  const std::size_t avail = left - kTlvHeaderSize;
  if (out.length > avail) {
    out.value = tlvs_.subspan(pos_ + kTlvHeaderSize, avail);
    out.malformed = true;
    done_ = true;
    return true;
  }
  out.value = tlvs_.subspan(pos_ + kTlvHeaderSize, out.length);
  pos_ += kTlvHeaderSize + out.length;
  return true;
}

bool encode_tlv_header(std::span<std::byte> out, std::uint8_t flags, std::uint8_t type,
                       std::uint16_t length) noexcept {
  if (out.size() < kTlvHeaderSize) {
    return false;
  }
  out[0] = static_cast<std::byte>(flags);
  out[1] = static_cast<std::byte>(type);
  platform::store_be16(out.data() + 2, length);
  return true;
}

void add_tlv_flags(std::span<std::byte> tlvs, std::size_t offset, std::uint8_t flags) noexcept {
  if (offset < tlvs.size()) {
    tlvs[offset] |= static_cast<std::byte>(flags);
  }
}

void clear_tlv_flags(std::span<std::byte> tlvs, std::size_t offset, std::uint8_t flags) noexcept {
  if (offset < tlvs.size()) {
    tlvs[offset] &= ~static_cast<std::byte>(flags);
  }
}

bool decode_class_of_service(std::span<const std::byte> value, ClassOfService& out) noexcept {
  if (value.size() < kClassOfServiceLength) {
    return false;
  }
  const auto b0 = static_cast<std::uint8_t>(value[0]);
  const auto b1 = static_cast<std::uint8_t>(value[1]);
  out.dscp1 = static_cast<std::uint8_t>(b0 >> 2);
  out.dscp2 = static_cast<std::uint8_t>(((b0 & 0x03U) << 4) | (b1 >> 4));
  out.ecn = static_cast<std::uint8_t>((b1 >> 2) & 0x03U);
  out.rp = static_cast<std::uint8_t>(b1 & 0x03U);
  return true;
}

bool encode_class_of_service(std::span<std::byte> value, const ClassOfService& cos) noexcept {
  if (value.size() < kClassOfServiceLength) {
    return false;
  }
  value[0] = static_cast<std::byte>(((cos.dscp1 & 0x3fU) << 2) | ((cos.dscp2 & 0x3fU) >> 4));
  value[1] = static_cast<std::byte>(((cos.dscp2 & 0x0fU) << 4) | ((cos.ecn & 0x03U) << 2) | (cos.rp & 0x03U));
  value[2] = std::byte{0};
  value[3] = std::byte{0};
  return true;
}

}  // namespace vantage::agent::probes::stamp
