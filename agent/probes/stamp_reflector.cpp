#include "agent/probes/stamp_reflector.hpp"

#include <asio/ip/address.hpp>

#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "platform/random_seed.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

constexpr std::size_t kMaxPacketSize = 65'507;  // the largest UDP payload over IPv4

bool valid(const StampReflectorConfig& c) noexcept {
  if (c.rate_limit.rate_per_s == 0 || c.rate_limit.burst == 0 || c.max_sources == 0 ||
      c.max_packet_size < stamp::kAuthenticatedSize || c.max_packet_size > kMaxPacketSize) {
    return false;
  }
  for (const StampKey& k : c.keys) {
    if (k.key.size() < stamp::kMinKeySize || k.key.size() > stamp::kMaxKeySize) {
      return false;
    }
  }
  return true;
}

// In network order: it only tells sessions apart.
std::uint16_t peer_port(const sockaddr_storage& peer) noexcept {
  static_assert(offsetof(sockaddr_in, sin_port) == offsetof(sockaddr_in6, sin6_port));
  std::uint16_t port = 0;
  std::memcpy(&port, reinterpret_cast<const unsigned char*>(&peer) + offsetof(sockaddr_in, sin_port), sizeof(port));
  return port;
}

}  // namespace

std::optional<AddressPrefix> AddressPrefix::parse(std::string_view text) {
  const std::size_t slash = text.find('/');
  std::error_code ec;
  const asio::ip::address a = asio::ip::make_address(std::string(text.substr(0, slash)), ec);
  if (ec) {
    return std::nullopt;
  }
  AddressPrefix p;
  unsigned max = 128;
  if (a.is_v4()) {
    const auto b = a.to_v4().to_bytes();
    p.address = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]};
    max = 32;
  } else {
    const auto b = a.to_v6().to_bytes();
    std::copy(b.begin(), b.end(), p.address.begin());
  }
  unsigned length = max;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), length);
    if (err != std::errc() || end != digits.data() + digits.size() || digits.empty() || length > max) {
      return std::nullopt;
    }
  }
  p.length = length + (max == 32 ? 96 : 0);
  // Host bits cleared, so that contains() compares whole bytes first.
  for (unsigned bit = p.length; bit < 128; ++bit) {
    p.address[bit / 8] = static_cast<std::uint8_t>(p.address[bit / 8] & ~(0x80U >> (bit % 8)));
  }
  return p;
}

bool AddressPrefix::contains(const std::array<std::uint8_t, 16>& a) const noexcept {
  const unsigned whole = length / 8;
  for (unsigned i = 0; i < whole; ++i) {
    if (a[i] != address[i]) {
      return false;
    }
  }
  if (const unsigned rest = length % 8; rest != 0) {
    const auto mask = static_cast<std::uint8_t>(0xffU << (8 - rest));
    return (a[whole] & mask) == address[whole];
  }
  return true;
}

StampReflector::StampReflector(asio::io_context& io, StampReflectorConfig config)
    : config_(std::move(config)),
      socket_(io),
      rate_limiter_(config_.rate_limit, config_.max_sources),
      session_table_(config_.max_sources, platform::random_seed()),
      buffer_(std::min(std::max(config_.max_packet_size, stamp::kAuthenticatedSize), kMaxPacketSize) + 1) {}

StampReflector::~StampReflector() = default;

platform::Status StampReflector::start() {
  if (!valid(config_)) {
    return platform::Status::error("invalid configuration (rate limit, source table size, packet size or key length)");
  }
  if (platform::Status s = socket_.open({.bind_address = config_.bind_address,
                                         .port = config_.port,
                                         .kernel_timestamps = config_.kernel_timestamps,
                                         .reply_from_destination = config_.reply_from_destination,
                                         .ip_header_info = true});
      !s) {
    return s;
  }
  local_port_ = socket_.local_endpoint().port();
  socket_.serve(
      buffer_, [this](const ReflectorDatagram& d, std::uint64_t now) { handle_datagram(d, now); },
      [this] { receive_errors_.bump(); });
  return platform::Status();
}

void StampReflector::stop() { socket_.stop(); }

asio::ip::udp::endpoint StampReflector::local_endpoint() const { return socket_.local_endpoint(); }

StampReflectorCounters StampReflector::counters() const noexcept {
  return snapshot_of<StampReflectorCounters>(received_, replied_, dropped_short_, dropped_malformed_, dropped_auth_,
                                             dropped_rate_limited_, send_errors_, receive_errors_,
                                             rate_limiter_.evictions(), session_evictions_, replied_unpinned_,
                                             replied_authenticated_, tlvs_unrecognised_, tlvs_malformed_);
}

const StampKey* StampReflector::key_for(const SourceKey& source) const noexcept {
  for (const StampKey& k : config_.keys) {
    for (const AddressPrefix& p : k.peers) {
      if (p.contains(source.address)) {
        return &k;
      }
    }
  }
  return nullptr;
}

int StampReflector::reflect_tlvs(std::span<std::byte> tlvs, int received_tos) noexcept {
  int reply_tos = -1;
  stamp::TlvWalker walker(tlvs);
  stamp::Tlv tlv;
  while (walker.next(tlv)) {
    if (tlv.malformed) {
      stamp::add_tlv_flags(tlvs, tlv.offset, stamp::kTlvFlagM);
      tlvs_malformed_.bump();
      break;
    }
    switch (tlv.type) {
      case stamp::kTlvExtraPadding:
        // Understood: U cleared (a sender sets it on every TLV, RFC 8972 §4).
        stamp::clear_tlv_flags(tlvs, tlv.offset, stamp::kTlvFlagU);
        break;
      case stamp::kTlvClassOfService: {
        stamp::ClassOfService cos;
        if (tlv.length != stamp::kClassOfServiceLength || !stamp::decode_class_of_service(tlv.value, cos)) {
          stamp::add_tlv_flags(tlvs, tlv.offset, stamp::kTlvFlagM);
          tlvs_malformed_.bump();
          break;
        }
        // RFC 8972 §4.4: the reply leaves with DSCP1; DSCP2 and ECN say what arrived; RP 0
        // says DSCP1 was used on the reverse path.
        stamp::clear_tlv_flags(tlvs, tlv.offset, stamp::kTlvFlagU);
        reply_tos = cos.dscp1 << 2;
        const int tos = received_tos < 0 ? 0 : received_tos;
        cos.dscp2 = static_cast<std::uint8_t>(tos >> 2);
        cos.ecn = static_cast<std::uint8_t>(tos & 0x03);
        cos.rp = 0;
        (void)stamp::encode_class_of_service(tlvs.subspan(tlv.offset + stamp::kTlvHeaderSize), cos);
        break;
      }
      default:
        // Returned as received, flagged as not understood (RFC 8972 §4).
        stamp::add_tlv_flags(tlvs, tlv.offset, stamp::kTlvFlagU);
        tlvs_unrecognised_.bump();
        break;
    }
  }
  return reply_tos;
}

void StampReflector::handle_datagram(const ReflectorDatagram& d, std::uint64_t now_mono_ns) {
  received_.bump();
  // The arrival time when the kernel gave none (or one the plausibility rule refuses).
  const std::int64_t read_ns = platform::realtime_ns();
  // The buffer holds one byte more than the limit, so an oversized datagram is seen as such.
  if (d.truncated || d.size > config_.max_packet_size) {
    dropped_malformed_.bump();
    return;
  }
  const std::span<std::byte> packet(buffer_.data(), d.size);
  SourceKey key;
  if (!source_key(socket_.peer(), key) || ntohs(peer_port(socket_.peer())) == local_port_) {
    dropped_malformed_.bump();
    return;
  }
  const StampKey* auth = key_for(key);
  if (auth == nullptr && !config_.unauthenticated) {
    dropped_auth_.bump();
    return;
  }
  const stamp::Mode mode = auth != nullptr ? stamp::Mode::kAuthenticated : stamp::Mode::kUnauthenticated;
  // RFC 5357 §4.1.2: a TWAMP-Light sender pads its 14 octets to the reflector's 41, so an
  // unauthenticated request of 41..43 octets is answered in that layout (no SSID, no TLVs).
  const bool twamp_light = mode == stamp::Mode::kUnauthenticated && packet.size() >= stamp::kTwampLightReplySize &&
                           packet.size() < stamp::kUnauthenticatedSize;
  if (packet.size() < stamp::base_size(mode) && !twamp_light) {
    dropped_short_.bump();
    return;
  }
  // Rate-limit before the HMAC and the session table: an over-rate source costs neither a
  // hash nor a session slot.
  if (!rate_limiter_.try_take(key, now_mono_ns)) {
    dropped_rate_limited_.bump();
    return;
  }
  if (auth != nullptr && !stamp::verify_hmac(packet, auth->key)) {
    dropped_auth_.bump();
    return;
  }
  // A TWAMP-Light request is read and answered through a base-sized copy: its fields sit where
  // STAMP's do, and the layout's last octets are zero.
  std::array<std::byte, stamp::kUnauthenticatedSize> short_packet{};
  const std::span<std::byte> base = twamp_light ? std::span<std::byte>(short_packet) : packet;
  if (twamp_light) std::memcpy(short_packet.data(), packet.data(), packet.size());
  stamp::SenderPacket request;
  (void)stamp::decode_sender(base, mode, request);
  if (twamp_light) request.ssid = 0;  // padding there, not an SSID

  stamp::ReflectorPacket reply;
  if (config_.stateful) {
    key.qualifier = (std::uint64_t{peer_port(socket_.peer())} << 16) | request.ssid;
    bool inserted = false;
    auto& session = session_table_.find_or_insert(key, now_mono_ns, inserted);
    if (inserted) {
      session_evictions_.store(session_table_.evictions(), std::memory_order_relaxed);
    }
    reply.seq = session.value.next_seq++;
  } else {
    reply.seq = request.seq;
  }
  reply.ssid = request.ssid;
  reply.sender_seq = request.seq;
  reply.sender_timestamp = request.timestamp;
  reply.sender_error_estimate = request.error_estimate;
  reply.sender_ttl = d.ttl >= 0 && d.ttl <= 255 ? static_cast<std::uint8_t>(d.ttl) : 255;
  // In authenticated mode the TLVs go back as they came and are not acted on: without the RFC
  // 8972 HMAC TLV nothing covers them, and an on-path party must not choose the reply's DSCP.
  const int reply_tos = twamp_light || mode == stamp::Mode::kAuthenticated
                            ? -1
                            : reflect_tlvs(packet.subspan(stamp::base_size(mode)), d.tos);

  const bool ptp = config_.timestamp_format == stamp::TimestampFormat::kPtp;
  reply.error_estimate =
      platform::encode_error_estimate(platform::error_estimate_of(platform::ClockStateCell::instance().current(), ptp));
  // Both stamps in CLOCK_REALTIME: the kernel's arrival stamp when plausible (the rule every
  // prober applies), else the read when handling began.
  const platform::RxTime rx = platform::rx_time(d.kernel_rx_ns, read_ns);
  const std::int64_t tx = std::max(platform::realtime_ns(), rx.ns);
  reply.receive_timestamp = stamp::wire_timestamp(rx.ns, config_.timestamp_format);
  reply.timestamp = stamp::wire_timestamp(tx, config_.timestamp_format);
  (void)stamp::encode_reflector(base, mode, reply);
  if (twamp_light) std::memcpy(packet.data(), short_packet.data(), packet.size());
  if (auth != nullptr) {
    (void)stamp::sign(packet, auth->key);
  }
  // Same length as the request: the reply is never larger than what the source sent.
  switch (socket_.send_reply(packet, reply_tos)) {
    case ReflectorSocket::Sent::kUnpinned:
      replied_unpinned_.bump();
      [[fallthrough]];
    case ReflectorSocket::Sent::kPinned:
      replied_.bump();
      if (auth != nullptr) {
        replied_authenticated_.bump();
      }
      break;
    case ReflectorSocket::Sent::kFailed:
      send_errors_.bump();
      break;
  }
}

}  // namespace vantage::agent::probes
