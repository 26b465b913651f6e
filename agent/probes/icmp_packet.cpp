#include "agent/probes/icmp_packet.hpp"

#include <netinet/in.h>

#include <cstring>

#include "platform/byte_order.hpp"

namespace vantage::agent::probes {
namespace {

using namespace icmp_type;
constexpr std::size_t kIpv4MinHeader = 20;
constexpr std::size_t kIpv6Header = 40;
constexpr std::uint8_t kNextHeaderIcmpV6 = 58;

// The wire is in network order and never cast to a struct, so alignment and padding of
// untrusted buffers do not matter.
using platform::load_be16;
using platform::load_be64;
using platform::store_be16;
using platform::store_be64;

}  // namespace

std::uint16_t internet_checksum(std::span<const std::byte> data) noexcept {
  std::uint32_t sum = 0;
  std::size_t i = 0;
  for (; i + 1 < data.size(); i += 2) {
    sum += load_be16(&data[i]);
  }
  if (i < data.size()) {
    sum += std::to_integer<std::uint32_t>(data[i]) << 8;
  }
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<std::uint16_t>(~sum & 0xffff);
}

std::size_t encode_icmp_echo_request(std::span<std::byte> out, bool ipv6, std::uint16_t id,
                                     std::uint16_t wire_seq, std::uint64_t cookie, std::int64_t send_ns,
                                     std::uint32_t target, std::size_t payload_size) noexcept {
  const std::size_t size = kIcmpHeaderSize + payload_size;
  if (payload_size < kIcmpMinPayload || out.size() < size) {
    return 0;
  }
  std::byte* p = out.data();
  p[0] = static_cast<std::byte>(ipv6 ? kEchoRequestV6 : kEchoRequestV4);
  p[1] = std::byte{0};
  store_be16(p + 2, 0);
  store_be16(p + 4, id);
  store_be16(p + 6, wire_seq);
  std::byte* payload = p + kIcmpHeaderSize;
  store_be64(payload, cookie);
  store_be64(payload + 8, static_cast<std::uint64_t>(send_ns));
  store_be64(payload + 16, static_cast<std::uint64_t>(target) << 32);
  for (std::size_t i = kIcmpMinPayload; i < payload_size; ++i) {
    payload[i] = static_cast<std::byte>(i & 0xff);
  }
  if (!ipv6) {
    store_be16(p + 2, internet_checksum(std::span<const std::byte>(p, size)));
  }
  return size;
}

namespace {

// Checks an IPv4 header at the front of packet and leaves packet holding what follows it.
// kNotEchoReply stands for "not ICMP inside"; the callers rename it as they need.
IcmpParseStatus skip_ipv4_header(std::span<const std::byte>& packet) noexcept {
  if (packet.size() < kIpv4MinHeader) {
    return IcmpParseStatus::kTooShort;
  }
  const unsigned version = std::to_integer<unsigned>(packet[0]) >> 4;
  const std::size_t header = (std::to_integer<std::size_t>(packet[0]) & 0x0f) * 4;
  if (version != 4 || header < kIpv4MinHeader || header > packet.size()) {
    return IcmpParseStatus::kMalformed;
  }
  if (std::to_integer<unsigned>(packet[9]) != IPPROTO_ICMP) {
    return IcmpParseStatus::kNotEchoReply;
  }
  packet = packet.subspan(header);
  return IcmpParseStatus::kOk;
}

}  // namespace

namespace {

// An echo message of `type` from its ICMP header on: code 0, the id (compared when check_id),
// then our payload (cookie, send time, target) into out. Replies and quoted requests differ
// only in the statuses for a wrong type and a short payload, and in whether the checksum
// still needs verifying.
template <typename Out>
IcmpParseStatus parse_echo(std::span<const std::byte> icmp, std::uint8_t type, IcmpParseStatus wrong_type,
                           IcmpParseStatus short_payload, bool verify_checksum, bool check_id,
                           std::uint16_t id, std::uint64_t cookie, Out& out) noexcept {
  if (icmp.size() < kIcmpHeaderSize) {
    return IcmpParseStatus::kTooShort;
  }
  if (std::to_integer<std::uint8_t>(icmp[0]) != type || std::to_integer<std::uint8_t>(icmp[1]) != 0) {
    return wrong_type;
  }
  out.id = load_be16(&icmp[4]);
  out.wire_seq = load_be16(&icmp[6]);
  if (check_id && out.id != id) {
    return IcmpParseStatus::kWrongId;
  }
  if (icmp.size() < kIcmpHeaderSize + kIcmpMinPayload) {
    return short_payload;
  }
  if (verify_checksum && internet_checksum(icmp) != 0) {
    return IcmpParseStatus::kMalformed;
  }
  // Without the cookie anyone who can guess a 16-bit id and seq could forge a reply or close
  // our probes with an error; with it, only someone who saw the request.
  const std::byte* payload = icmp.data() + kIcmpHeaderSize;
  if (load_be64(payload) != cookie) {
    return IcmpParseStatus::kWrongCookie;
  }
  out.send_ns = static_cast<std::int64_t>(load_be64(payload + 8));
  out.target = static_cast<std::uint32_t>(load_be64(payload + 16) >> 32);
  return IcmpParseStatus::kOk;
}

}  // namespace

IcmpParseStatus parse_icmp_echo_reply(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                      bool check_id, std::uint16_t id, std::uint64_t cookie,
                                      IcmpEchoReply& out) noexcept {
  if (with_ip_header && !ipv6) {
    if (const IcmpParseStatus status = skip_ipv4_header(packet); status != IcmpParseStatus::kOk) {
      return status;
    }
  }
  // Ping sockets and the IPv6 stack check the checksum before delivery; an IPv4 raw socket
  // hands over whatever arrived.
  return parse_echo(packet, ipv6 ? kEchoReplyV6 : kEchoReplyV4, IcmpParseStatus::kNotEchoReply,
                    IcmpParseStatus::kTooShort, with_ip_header && !ipv6, check_id, id, cookie, out);
}

bool is_icmp_error_for_probe(bool ipv6, std::uint8_t type) noexcept {
  return ipv6 ? (type == kDestUnreachableV6 || type == kPacketTooBigV6 || type == kTimeExceededV6)
              : (type == kDestUnreachableV4 || type == kTimeExceededV4);
}

IcmpParseStatus parse_quoted_echo_request(std::span<const std::byte> quote, bool ipv6, bool check_id,
                                          std::uint16_t id, std::uint64_t cookie,
                                          IcmpErrorReport& out) noexcept {
  return parse_echo(quote, ipv6 ? kEchoRequestV6 : kEchoRequestV4, IcmpParseStatus::kNotIcmpError,
                    IcmpParseStatus::kShortQuote, false, check_id, id, cookie, out);
}

IcmpParseStatus parse_icmp_error(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                 std::uint16_t id, std::uint64_t cookie, IcmpErrorReport& out) noexcept {
  const bool ipv4_raw = with_ip_header && !ipv6;
  if (ipv4_raw) {
    if (const IcmpParseStatus status = skip_ipv4_header(packet); status != IcmpParseStatus::kOk) {
      return status == IcmpParseStatus::kNotEchoReply ? IcmpParseStatus::kNotIcmpError : status;
    }
  }
  if (packet.size() < kIcmpHeaderSize) {
    return IcmpParseStatus::kTooShort;
  }
  out.type = std::to_integer<std::uint8_t>(packet[0]);
  out.code = std::to_integer<std::uint8_t>(packet[1]);
  if (!is_icmp_error_for_probe(ipv6, out.type)) {
    return IcmpParseStatus::kNotIcmpError;
  }
  if (ipv4_raw && internet_checksum(packet) != 0) {
    return IcmpParseStatus::kMalformed;
  }
  std::span<const std::byte> inner = packet.subspan(kIcmpHeaderSize);
  out.destination = {};
  if (ipv6) {
    if (inner.size() < kIpv6Header) {
      return IcmpParseStatus::kTooShort;
    }
    if (std::to_integer<unsigned>(inner[0]) >> 4 != 6) {
      return IcmpParseStatus::kMalformed;
    }
    // We send no extension headers, so an echo request of ours has ICMPv6 right next.
    if (std::to_integer<std::uint8_t>(inner[6]) != kNextHeaderIcmpV6) {
      return IcmpParseStatus::kNotIcmpError;
    }
    std::memcpy(out.destination.data(), inner.data() + 24, 16);
    inner = inner.subspan(kIpv6Header);
  } else {
    const std::span<const std::byte> quoted_ip = inner;
    if (const IcmpParseStatus status = skip_ipv4_header(inner); status != IcmpParseStatus::kOk) {
      return status == IcmpParseStatus::kNotEchoReply ? IcmpParseStatus::kNotIcmpError : status;
    }
    std::memcpy(out.destination.data(), quoted_ip.data() + 16, 4);
  }
  return parse_quoted_echo_request(inner, ipv6, true, id, cookie, out);
}

bool unwrap_icmp_sequence(std::uint64_t next_seq, std::uint16_t wire_seq, std::uint64_t& seq) noexcept {
  if (next_seq == 0) {
    return false;
  }
  const std::uint64_t last = next_seq - 1;
  // How far behind the last sent seq this one is, modulo 2^16: replies older than 65536
  // probes alias onto newer ones, which the aggregator's timeout has long written off.
  const std::uint16_t behind = static_cast<std::uint16_t>(static_cast<std::uint16_t>(last) - wire_seq);
  if (behind > last) {
    return false;
  }
  seq = last - behind;
  return true;
}

}  // namespace vantage::agent::probes
