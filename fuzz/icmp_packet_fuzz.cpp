// libFuzzer target: the ICMP prober's parsers for what a raw or ping socket hands over from
// anyone: echo replies and the ICMP(v6) errors that quote our requests (the quoted IP header
// included). Input: a selector byte (IPv6, IP header present, id checked), our id (2 bytes,
// big-endian) and cookie (8), then the packet. Every parser runs on it; besides crashes and
// reads past the packet it traps when an accepted packet does not carry our id and cookie, when
// an accepted error is not an error type we handle, and when the sequence unwrap or the
// checksum break their arithmetic rules, or our own request does not read back.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "agent/probes/icmp_packet.hpp"

namespace {

using namespace vantage::agent::probes;

constexpr std::size_t kPrefix = 11;  // selector, id, cookie

void check(bool ok) {
  if (!ok) __builtin_trap();
}

std::uint64_t load_be(const std::uint8_t* p, std::size_t n) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v = v << 8 | p[i];
  return v;
}

void check_unwrap(std::uint64_t next_seq, std::uint16_t wire_seq) {
  std::uint64_t seq = 0;
  if (unwrap_icmp_sequence(next_seq, wire_seq, seq)) {
    // The latest sent seq with those low 16 bits.
    check(seq < next_seq && static_cast<std::uint16_t>(seq) == wire_seq && next_seq - 1 - seq <= 0xffff);
  } else {
    check(next_seq <= wire_seq);  // no sent seq has them
  }
}

// Our own request, encoded from the input's values, reads back through the quote parser and,
// turned into its reply, through the reply parser.
void check_round_trip(bool ipv6, std::uint16_t id, std::uint64_t cookie, std::size_t payload_size) {
  std::byte packet[kIcmpHeaderSize + kIcmpMinPayload + 64];
  const auto wire_seq = static_cast<std::uint16_t>(cookie >> 16);
  const auto send_ns = static_cast<std::int64_t>(cookie * 3);
  const auto target = static_cast<std::uint32_t>(cookie >> 24);
  const std::size_t n =
      encode_icmp_echo_request(packet, ipv6, id, wire_seq, cookie, send_ns, target, payload_size);
  check(n == kIcmpHeaderSize + payload_size);
  const std::span<const std::byte> request(packet, n);
  IcmpErrorReport quoted;
  check(parse_quoted_echo_request(request, ipv6, true, id, cookie, quoted) == IcmpParseStatus::kOk);
  check(quoted.id == id && quoted.wire_seq == wire_seq && quoted.send_ns == send_ns &&
        quoted.target == target);
  check(parse_quoted_echo_request(request, ipv6, true, id, cookie + 1, quoted) ==
        IcmpParseStatus::kWrongCookie);
  packet[0] = static_cast<std::byte>(ipv6 ? icmp_type::kEchoReplyV6 : icmp_type::kEchoReplyV4);
  IcmpEchoReply reply;
  check(parse_icmp_echo_reply(request, ipv6, false, true, id, cookie, reply) == IcmpParseStatus::kOk);
  check(reply.id == id && reply.wire_seq == wire_seq && reply.send_ns == send_ns && reply.target == target);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < kPrefix) return 0;
  const bool ipv6 = (data[0] & 1) != 0;
  const bool with_ip_header = (data[0] & 2) != 0;
  const bool check_id = (data[0] & 4) != 0;
  const auto id = static_cast<std::uint16_t>(load_be(data + 1, 2));
  const std::uint64_t cookie = load_be(data + 3, 8);
  const std::span<const std::byte> packet(reinterpret_cast<const std::byte*>(data + kPrefix), size - kPrefix);

  IcmpEchoReply reply;
  if (parse_icmp_echo_reply(packet, ipv6, with_ip_header, check_id, id, cookie, reply) ==
      IcmpParseStatus::kOk) {
    check(!check_id || reply.id == id);
    check(packet.size() >= kIcmpHeaderSize + kIcmpMinPayload);
    check_unwrap(load_be(data + 3, 8) >> 8, reply.wire_seq);
  }

  IcmpErrorReport error;
  if (parse_icmp_error(packet, ipv6, with_ip_header, id, cookie, error) == IcmpParseStatus::kOk) {
    check(is_icmp_error_for_probe(ipv6, error.type) && error.id == id);
    // The quoted IP header, the quoted ICMP header and our payload all fit in the packet.
    check(packet.size() >= kIcmpHeaderSize + (ipv6 ? 40 : 20) + kIcmpHeaderSize + kIcmpMinPayload);
    if (!ipv6) {
      static constexpr std::byte kZero[12]{};
      check(std::memcmp(error.destination.data() + 4, kZero, sizeof kZero) == 0);
    }
  }

  // The quote alone, as the error queue of a ping socket delivers it.
  IcmpErrorReport quoted;
  if (parse_quoted_echo_request(packet, ipv6, check_id, id, cookie, quoted) == IcmpParseStatus::kOk) {
    check(!check_id || quoted.id == id);
    check(load_be(data + kPrefix + kIcmpHeaderSize, 8) == cookie);
  }

  // RFC 1071: the data with its own checksum appended sums to zero.
  if (packet.size() % 2 == 0 && packet.size() <= 1500) {
    std::byte buffer[1502];
    std::memcpy(buffer, packet.data(), packet.size());
    const std::uint16_t sum = internet_checksum(packet);
    buffer[packet.size()] = static_cast<std::byte>(sum >> 8);
    buffer[packet.size() + 1] = static_cast<std::byte>(sum & 0xff);
    check(internet_checksum(std::span<const std::byte>(buffer, packet.size() + 2)) == 0);
  }
  check_unwrap(load_be(data + 3, 8), static_cast<std::uint16_t>(id));
  check_round_trip(ipv6, id, cookie, kIcmpMinPayload + packet.size() % 64);
  return 0;
}
