#include "agent/probes/probe_packet.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "platform/byte_order.hpp"
#include "platform/clock_state.hpp"
#include "platform/enum_names.hpp"

namespace vantage::agent::probes {
namespace {

constexpr std::size_t kOffMagic = 0;
constexpr std::size_t kOffVersion = 4;
constexpr std::size_t kOffFlags = 5;
constexpr std::size_t kOffReserved = 6;
constexpr std::size_t kOffSequence = 8;
constexpr std::size_t kOffSenderId = 16;
constexpr std::size_t kOffSendNs = 24;
constexpr std::size_t kOffRxNs = 32;
constexpr std::size_t kOffTxNs = 40;
constexpr std::size_t kOffBoot = 48;
constexpr std::size_t kOffSessionId = 56;
constexpr std::size_t kOffSessionRx = 60;
static_assert(kOffSessionRx + 4 == kProbeHeaderSize);

constexpr std::size_t kOffExtMagic = kProbeHeaderSize;
constexpr std::size_t kOffExtVersion = kProbeHeaderSize + 4;
constexpr std::size_t kOffExtFlags = kProbeHeaderSize + 5;
constexpr std::size_t kOffSenderError = kProbeHeaderSize + 6;
constexpr std::size_t kOffSenderTx = kProbeHeaderSize + 8;
constexpr std::size_t kOffReflRx = kProbeHeaderSize + 16;
constexpr std::size_t kOffReflTx = kProbeHeaderSize + 24;
constexpr std::size_t kOffReflError = kProbeHeaderSize + 32;
static_assert(kOffReflError + 2 + 6 == kClockProbeSize);

using platform::load_le;
using platform::store_le;

}  // namespace

const char* to_string(ProbeDecodeStatus status) noexcept {
  static constexpr const char* kNames[] = {"ok",          "too short", "too long",    "bad magic",
                                           "bad version", "bad flags", "bad reserved"};
  static_assert(platform::enum_table_covers<ProbeDecodeStatus, ProbeDecodeStatus::kBadReserved>(kNames));
  return platform::enum_name(status, kNames);
}

ProbeDecodeStatus decode_probe(std::span<const std::byte> bytes, ProbeKind expected, ProbeHeader& out,
                               std::size_t max_size) noexcept {
  // Magic before length, so foreign traffic of any size is classified as foreign.
  if (bytes.size() < kProbeHeaderSize) {
    if (bytes.size() >= 4 && load_le<std::uint32_t>(bytes.data() + kOffMagic) != kProbeMagic) {
      return ProbeDecodeStatus::kBadMagic;
    }
    return ProbeDecodeStatus::kTooShort;
  }
  const std::byte* p = bytes.data();
  if (load_le<std::uint32_t>(p + kOffMagic) != kProbeMagic) {
    return ProbeDecodeStatus::kBadMagic;
  }
  if (bytes.size() > std::min(max_size, kMaxProbeSize)) {
    return ProbeDecodeStatus::kTooLong;
  }
  if (load_le<std::uint8_t>(p + kOffVersion) != kProbeVersion) {
    return ProbeDecodeStatus::kBadVersion;
  }
  const auto flags = load_le<std::uint8_t>(p + kOffFlags);
  const bool reply = (flags & kFlagReply) != 0;
  if ((flags & ~kKnownFlags) != 0 || reply != (expected == ProbeKind::kReply) || (!reply && flags != 0)) {
    return ProbeDecodeStatus::kBadFlags;
  }
  if (load_le<std::uint16_t>(p + kOffReserved) != 0) {
    return ProbeDecodeStatus::kBadReserved;
  }
  out.flags = flags;
  out.sequence = load_le<std::uint64_t>(p + kOffSequence);
  out.sender_id = load_le<std::uint64_t>(p + kOffSenderId);
  out.send_ns = load_le<std::uint64_t>(p + kOffSendNs);
  out.reflector_rx_ns = load_le<std::uint64_t>(p + kOffRxNs);
  out.reflector_tx_ns = load_le<std::uint64_t>(p + kOffTxNs);
  out.reflector_boot = load_le<std::uint64_t>(p + kOffBoot);
  out.session_id = load_le<std::uint32_t>(p + kOffSessionId);
  out.session_rx = load_le<std::uint32_t>(p + kOffSessionRx);
  return ProbeDecodeStatus::kOk;
}

std::size_t encode_request(const ProbeHeader& header, std::span<std::byte> out, std::size_t size) noexcept {
  if (size < kProbeHeaderSize || size > kMaxProbeSize || size > out.size()) {
    return 0;
  }
  std::byte* p = out.data();
  std::memset(p, 0, size);
  store_le<std::uint32_t>(p + kOffMagic, kProbeMagic);
  store_le<std::uint8_t>(p + kOffVersion, kProbeVersion);
  store_le<std::uint64_t>(p + kOffSequence, header.sequence);
  store_le<std::uint64_t>(p + kOffSenderId, header.sender_id);
  store_le<std::uint64_t>(p + kOffSendNs, header.send_ns);
  return size;
}

void stamp_reply(std::span<std::byte> packet, const ReplyStamp& stamp) noexcept {
  assert(packet.size() >= kProbeHeaderSize);
  std::byte* p = packet.data();
  const std::uint8_t flags = kFlagReply | (stamp.kernel_rx_timestamp ? kFlagKernelRxTimestamp : 0);
  store_le<std::uint8_t>(p + kOffFlags, flags);
  store_le<std::uint64_t>(p + kOffRxNs, stamp.rx_ns);
  store_le<std::uint64_t>(p + kOffTxNs, stamp.tx_ns);
  store_le<std::uint64_t>(p + kOffBoot, stamp.boot);
  store_le<std::uint32_t>(p + kOffSessionId, stamp.session_id);
  store_le<std::uint32_t>(p + kOffSessionRx, stamp.session_rx);
}

bool write_clock_request(std::span<std::byte> packet, std::int64_t sender_tx_realtime_ns,
                         std::uint16_t sender_error_estimate) noexcept {
  if (packet.size() < kClockProbeSize) return false;
  std::byte* p = packet.data();
  std::memset(p + kOffExtMagic, 0, kClockExtensionSize);
  store_le<std::uint32_t>(p + kOffExtMagic, kClockExtMagic);
  store_le<std::uint8_t>(p + kOffExtVersion, kClockExtVersion);
  store_le<std::uint16_t>(p + kOffSenderError, sender_error_estimate);
  store_le<std::uint64_t>(p + kOffSenderTx, static_cast<std::uint64_t>(sender_tx_realtime_ns));
  return true;
}

bool stamp_clock_reply(std::span<std::byte> packet, std::int64_t rx_realtime_ns, std::int64_t tx_realtime_ns,
                       std::uint16_t reflector_error_estimate) noexcept {
  if (packet.size() < kClockProbeSize) return false;
  std::byte* p = packet.data();
  if (load_le<std::uint32_t>(p + kOffExtMagic) != kClockExtMagic ||
      load_le<std::uint8_t>(p + kOffExtVersion) != kClockExtVersion ||
      load_le<std::uint8_t>(p + kOffExtFlags) != 0) {
    return false;
  }
  store_le<std::uint8_t>(p + kOffExtFlags, kClockExtFilled);
  store_le<std::uint64_t>(p + kOffReflRx, static_cast<std::uint64_t>(rx_realtime_ns));
  store_le<std::uint64_t>(p + kOffReflTx, static_cast<std::uint64_t>(tx_realtime_ns));
  store_le<std::uint16_t>(p + kOffReflError, reflector_error_estimate);
  return true;
}

std::optional<ClockExtension> read_clock_extension(std::span<const std::byte> packet) noexcept {
  if (packet.size() < kClockProbeSize) return std::nullopt;
  const std::byte* p = packet.data();
  if (load_le<std::uint32_t>(p + kOffExtMagic) != kClockExtMagic ||
      load_le<std::uint8_t>(p + kOffExtVersion) != kClockExtVersion) {
    return std::nullopt;
  }
  ClockExtension ext;
  ext.sender_error = load_le<std::uint16_t>(p + kOffSenderError);
  ext.sender_tx_ns = static_cast<std::int64_t>(load_le<std::uint64_t>(p + kOffSenderTx));
  ext.reflected = (load_le<std::uint8_t>(p + kOffExtFlags) & kClockExtFilled) != 0;
  if (ext.reflected) {
    ext.reflector_rx_ns = static_cast<std::int64_t>(load_le<std::uint64_t>(p + kOffReflRx));
    ext.reflector_tx_ns = static_cast<std::int64_t>(load_le<std::uint64_t>(p + kOffReflTx));
    ext.reflector_error = load_le<std::uint16_t>(p + kOffReflError);
  }
  return ext;
}

void fill_one_way(ProbeEvent& event, const ClockExtension& ext, std::int64_t receive_realtime_ns) noexcept {
  if (!ext.reflected) return;
  const platform::ErrorEstimate sender = platform::decode_error_estimate(ext.sender_error);
  const platform::ErrorEstimate reflector = platform::decode_error_estimate(ext.reflector_error);
  event.one_way = true;
  // Unsigned differences, then signed: stamps from skewed clocks wrap instead of overflowing.
  event.forward_ns = static_cast<std::int64_t>(static_cast<std::uint64_t>(ext.reflector_rx_ns) -
                                               static_cast<std::uint64_t>(ext.sender_tx_ns));
  event.backward_ns = static_cast<std::int64_t>(static_cast<std::uint64_t>(receive_realtime_ns) -
                                                static_cast<std::uint64_t>(ext.reflector_tx_ns));
  event.sender_synchronised = sender.synchronised;
  event.reflector_synchronised = reflector.synchronised;
  event.sender_error_ns = sender.error_ns;
  event.reflector_error_ns = reflector.error_ns;
}

void fill_one_way(ProbeEvent& event, std::span<const std::byte> reply, std::int64_t receive_realtime_ns) noexcept {
  if (const std::optional<ClockExtension> ext = read_clock_extension(reply)) {
    fill_one_way(event, *ext, receive_realtime_ns);
  }
}

}  // namespace vantage::agent::probes
