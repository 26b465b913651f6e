// ICMP/ICMPv6 echo packets as the ICMP prober sends and reads them: encoding our echo
// requests, parsing echo replies and the ICMP errors that quote our requests, and mapping the
// 16-bit wire sequence back onto the prober's 64-bit counter. Pure functions over byte spans.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vantage::agent::probes {

// Our payload: cookie (8) | send_ns (8) | target (4) | zero (4), then padding up to the size.
inline constexpr std::size_t kIcmpMinPayload = 24;
inline constexpr std::size_t kIcmpMaxPayload = 1452;  // fits a 1500-byte MTU over IPv6
inline constexpr std::size_t kIcmpHeaderSize = 8;

// ICMP(v6) message types the prober sends, reads or filters on.
namespace icmp_type {
inline constexpr std::uint8_t kEchoRequestV4 = 8;
inline constexpr std::uint8_t kEchoReplyV4 = 0;
inline constexpr std::uint8_t kDestUnreachableV4 = 3;
inline constexpr std::uint8_t kTimeExceededV4 = 11;
inline constexpr std::uint8_t kEchoRequestV6 = 128;
inline constexpr std::uint8_t kEchoReplyV6 = 129;
inline constexpr std::uint8_t kDestUnreachableV6 = 1;
inline constexpr std::uint8_t kPacketTooBigV6 = 2;
inline constexpr std::uint8_t kTimeExceededV6 = 3;
}  // namespace icmp_type

enum class IcmpParseStatus : std::uint8_t {
  kOk,
  kTooShort,
  kMalformed,
  kNotEchoReply,
  kWrongId,
  kWrongCookie,
  kNotIcmpError,  // parse_icmp_error: not an error type we handle, or not about an echo request
  kShortQuote,    // an error quoting our echo request, but too little of it to hold our cookie
};

struct IcmpEchoReply {
  std::uint16_t id = 0;
  std::uint16_t wire_seq = 0;
  std::int64_t send_ns = 0;
  std::uint32_t target = 0;
};

// Writes an echo request (header + payload of payload_size bytes) into out and returns its
// length, or 0 if out is too small or payload_size < kIcmpMinPayload. The checksum is filled
// in for IPv4 (raw sockets need it; ping sockets recompute it); ICMPv6's covers a pseudo header
// the kernel always computes.
std::size_t encode_icmp_echo_request(std::span<std::byte> out, bool ipv6, std::uint16_t id,
                                     std::uint16_t wire_seq, std::uint64_t cookie, std::int64_t send_ns,
                                     std::uint32_t target, std::size_t payload_size) noexcept;

// Parses a received datagram as an echo reply carrying our cookie. with_ip_header: IPv4 raw
// sockets deliver the IP header too. check_id: raw sockets see every host's ICMP, while ping
// sockets only get replies to their own kernel-chosen id.
IcmpParseStatus parse_icmp_echo_reply(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                      bool check_id, std::uint16_t id, std::uint64_t cookie,
                                      IcmpEchoReply& out) noexcept;

// An ICMP error about one of our echo requests, from the part of the request it quotes.
struct IcmpErrorReport {
  std::uint8_t type = 0;  // ICMP(v6) type and code of the error
  std::uint8_t code = 0;
  std::uint16_t id = 0;
  std::uint16_t wire_seq = 0;
  std::int64_t send_ns = 0;
  std::uint32_t target = 0;
  // Destination of the quoted request (4 bytes for IPv4), from the quoted IP header; raw
  // sockets only, the error queue reports it as the message's address instead.
  std::array<std::byte, 16> destination{};
};

// Whether an ICMP(v6) type is one that says an echo request did not reach its target:
// destination unreachable (any code) and time exceeded, and for IPv6 packet too big (IPv4's
// counterpart is unreachable code 4). Redirects, parameter problems and the rest are not.
bool is_icmp_error_for_probe(bool ipv6, std::uint8_t type) noexcept;

// Parses the echo request quoted in an ICMP error (from its ICMP header on): our type, code 0,
// optionally our id, and the cookie; fills id, wire_seq, send_ns and target of out.
IcmpParseStatus parse_quoted_echo_request(std::span<const std::byte> quote, bool ipv6, bool check_id,
                                          std::uint16_t id, std::uint64_t cookie,
                                          IcmpErrorReport& out) noexcept;

// Parses an ICMP error as a raw socket receives it (IPv4: behind the IP header): an error type
// of is_icmp_error_for_probe, the quoted IP header (IPv4 with ICMP inside, or IPv6 with ICMPv6
// directly next) and a quoted echo request with our id and cookie. Every length is checked
// against the received size: nothing past `packet` is read.
IcmpParseStatus parse_icmp_error(std::span<const std::byte> packet, bool ipv6, bool with_ip_header,
                                 std::uint16_t id, std::uint64_t cookie, IcmpErrorReport& out) noexcept;

// RFC 1071 one's complement sum over data; 0 over a packet whose checksum field is correct.
std::uint16_t internet_checksum(std::span<const std::byte> data) noexcept;

// Maps a 16-bit wire sequence back onto the 64-bit per-target counter, given how many probes
// were sent (next_seq): the latest sent seq with those low 16 bits. False if no sent probe has
// them (nothing sent yet, or the value predates the first probe).
bool unwrap_icmp_sequence(std::uint64_t next_seq, std::uint16_t wire_seq, std::uint64_t& seq) noexcept;

}  // namespace vantage::agent::probes
