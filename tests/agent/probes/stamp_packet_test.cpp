// STAMP codec: every field at the RFC 8762 / RFC 8972 offset, checked against hand-written byte
// arrays; NTP and PTP timestamps; HMAC-SHA-256-128 against a known answer (Python's hmac); the
// TLV walk with overruns; the Class of Service TLV's bit layout.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "agent/probes/stamp_packet.hpp"

namespace {

namespace stamp = vantage::agent::probes::stamp;
using Bytes = std::vector<std::byte>;

Bytes bytes(std::initializer_list<int> v) {
  Bytes out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

void put(Bytes& p, std::size_t offset, std::initializer_list<int> v) {
  for (int b : v) p[offset++] = static_cast<std::byte>(b);
}

}  // namespace

TEST_CASE("stamp: unauthenticated session-sender layout, 44 bytes") {
  Bytes wire(44, std::byte{0});
  put(wire, 0, {0x01, 0x02, 0x03, 0x04});                          // Sequence Number
  put(wire, 4, {0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18});  // Timestamp
  put(wire, 12, {0x81, 0x02});                                     // Error Estimate
  put(wire, 14, {0xbe, 0xef});                                     // SSID
  stamp::SenderPacket p;
  REQUIRE(stamp::decode_sender(wire, stamp::Mode::kUnauthenticated, p));
  CHECK(p.seq == 0x01020304U);
  CHECK(p.timestamp == 0x1112131415161718ULL);
  CHECK(p.error_estimate == 0x8102);
  CHECK(p.ssid == 0xbeef);
  Bytes out(44, std::byte{0xff});
  REQUIRE(stamp::encode_sender(out, stamp::Mode::kUnauthenticated, p));
  CHECK(out == wire);  // MBZ zeroed
  CHECK_FALSE(stamp::decode_sender(std::span(wire).first(43), stamp::Mode::kUnauthenticated, p));
}

TEST_CASE("stamp: authenticated session-sender layout, 112 bytes") {
  Bytes wire(112, std::byte{0});
  put(wire, 0, {0xa1, 0xa2, 0xa3, 0xa4});
  put(wire, 16, {0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28});
  put(wire, 24, {0x40, 0x05});
  put(wire, 26, {0x00, 0x07});
  stamp::SenderPacket p;
  REQUIRE(stamp::decode_sender(wire, stamp::Mode::kAuthenticated, p));
  CHECK(p.seq == 0xa1a2a3a4U);
  CHECK(p.timestamp == 0x2122232425262728ULL);
  CHECK(p.error_estimate == 0x4005);
  CHECK(p.ssid == 7);
  Bytes out(112, std::byte{0xff});
  REQUIRE(stamp::encode_sender(out, stamp::Mode::kAuthenticated, p));
  CHECK(out == wire);
  CHECK_FALSE(stamp::decode_sender(std::span(wire).first(111), stamp::Mode::kAuthenticated, p));
}

TEST_CASE("stamp: unauthenticated session-reflector layout, and TWAMP-Light's 41 bytes") {
  Bytes wire(44, std::byte{0});
  put(wire, 0, {0x00, 0x00, 0x00, 0x05});                          // Sequence Number
  put(wire, 4, {0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38});  // Timestamp
  put(wire, 12, {0x80, 0x10});                                     // Error Estimate
  put(wire, 14, {0x12, 0x34});                                     // SSID
  put(wire, 16, {0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48});  // Receive Timestamp
  put(wire, 24, {0x00, 0x00, 0x01, 0x00});                         // Session-Sender Sequence Number
  put(wire, 28, {0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58});  // Session-Sender Timestamp
  put(wire, 36, {0x00, 0x20});                                     // Session-Sender Error Estimate
  wire[40] = std::byte{63};                                        // Session-Sender TTL
  stamp::ReflectorPacket p;
  REQUIRE(stamp::decode_reflector(wire, stamp::Mode::kUnauthenticated, p));
  CHECK(p.seq == 5);
  CHECK(p.timestamp == 0x3132333435363738ULL);
  CHECK(p.error_estimate == 0x8010);
  CHECK(p.ssid == 0x1234);
  CHECK(p.receive_timestamp == 0x4142434445464748ULL);
  CHECK(p.sender_seq == 256);
  CHECK(p.sender_timestamp == 0x5152535455565758ULL);
  CHECK(p.sender_error_estimate == 0x20);
  CHECK(p.sender_ttl == 63);
  Bytes out(44, std::byte{0xff});
  REQUIRE(stamp::encode_reflector(out, stamp::Mode::kUnauthenticated, p));
  CHECK(out == wire);
  stamp::ReflectorPacket light;
  REQUIRE(stamp::decode_reflector(std::span(wire).first(41), stamp::Mode::kUnauthenticated, light));
  CHECK(light.sender_ttl == 63);
  CHECK_FALSE(stamp::decode_reflector(std::span(wire).first(40), stamp::Mode::kUnauthenticated, light));
}

TEST_CASE("stamp: authenticated session-reflector layout, 112 bytes") {
  Bytes wire(112, std::byte{0});
  put(wire, 0, {0x00, 0x00, 0x00, 0x09});
  put(wire, 16, {0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38});
  put(wire, 24, {0x80, 0x10});
  put(wire, 26, {0x12, 0x34});
  put(wire, 32, {0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48});
  put(wire, 48, {0x00, 0x00, 0x01, 0x00});
  put(wire, 64, {0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58});
  put(wire, 72, {0x00, 0x20});
  wire[80] = std::byte{255};
  stamp::ReflectorPacket p;
  REQUIRE(stamp::decode_reflector(wire, stamp::Mode::kAuthenticated, p));
  CHECK(p.seq == 9);
  CHECK(p.timestamp == 0x3132333435363738ULL);
  CHECK(p.error_estimate == 0x8010);
  CHECK(p.ssid == 0x1234);
  CHECK(p.receive_timestamp == 0x4142434445464748ULL);
  CHECK(p.sender_seq == 256);
  CHECK(p.sender_timestamp == 0x5152535455565758ULL);
  CHECK(p.sender_error_estimate == 0x20);
  CHECK(p.sender_ttl == 255);
  Bytes out(112, std::byte{0xff});
  REQUIRE(stamp::encode_reflector(out, stamp::Mode::kAuthenticated, p));
  CHECK(out == wire);
  CHECK_FALSE(stamp::decode_reflector(std::span(wire).first(111), stamp::Mode::kAuthenticated, p));
  CHECK_FALSE(stamp::encode_reflector(std::span(out).first(111), stamp::Mode::kAuthenticated, p));
}

TEST_CASE("stamp: NTP and PTP timestamps") {
  // 2021-01-01T00:00:00.5Z: 1609459200 s since 1970, 3818448000 since 1900.
  const std::int64_t ns = 1'609'459'200'500'000'000;
  CHECK(stamp::ntp_from_realtime_ns(ns) == ((std::uint64_t{3'818'448'000} << 32) | 0x8000'0000U));
  CHECK(stamp::ptp_from_realtime_ns(ns) == ((std::uint64_t{1'609'459'200} << 32) | 500'000'000U));
  CHECK(stamp::realtime_ns_from_ntp(stamp::ntp_from_realtime_ns(ns)) == ns);
  CHECK(stamp::realtime_ns_from_ptp(stamp::ptp_from_realtime_ns(ns)) == ns);
  // Every nanosecond survives the NTP fraction's round trip.
  for (std::int64_t extra : {1, 3, 7, 999'999'999, 123'456'789}) {
    const std::int64_t t = 1'700'000'000'000'000'000 + extra;
    CHECK(stamp::realtime_ns_from_wire(stamp::wire_timestamp(t, stamp::TimestampFormat::kNtp),
                                       stamp::TimestampFormat::kNtp) == t);
    CHECK(stamp::realtime_ns_from_wire(stamp::wire_timestamp(t, stamp::TimestampFormat::kPtp),
                                       stamp::TimestampFormat::kPtp) == t);
  }
  // After the NTP era rollover (2036-02-07T06:28:16Z): seconds wrap, decoding still lands there.
  const std::int64_t after = (std::int64_t{4'294'967'296} - 2'208'988'800 + 10) * 1'000'000'000;
  CHECK((stamp::ntp_from_realtime_ns(after) >> 32) == 10);
  CHECK(stamp::realtime_ns_from_ntp(stamp::ntp_from_realtime_ns(after)) == after);
}

TEST_CASE("stamp: HMAC-SHA-256-128 known answer, constant-time verify") {
  // Python: hmac.new(bytes(range(16)), packet[:96], hashlib.sha256).digest()[:16]
  Bytes packet(112, std::byte{0});
  put(packet, 0, {0, 0, 0, 1});
  put(packet, 16, {1, 2, 3, 4, 5, 6, 7, 8});
  put(packet, 24, {0x80, 0x01});
  put(packet, 26, {0x12, 0x34});
  Bytes key;
  for (int i = 0; i < 16; ++i) key.push_back(static_cast<std::byte>(i));
  const Bytes expected = bytes({0x8b, 0x2c, 0xde, 0xf9, 0x6f, 0x8c, 0xd6, 0x5a, 0x29, 0xa3, 0x15, 0x2e, 0x3e, 0xa6,
                                0x99, 0xae});
  REQUIRE(stamp::sign(packet, key));
  CHECK(Bytes(packet.begin() + 96, packet.end()) == expected);
  CHECK(stamp::verify_hmac(packet, key));
  Bytes other = key;
  other[0] = std::byte{0xff};
  CHECK_FALSE(stamp::verify_hmac(packet, other));
  packet[5] ^= std::byte{1};
  CHECK_FALSE(stamp::verify_hmac(packet, key));
  packet[5] ^= std::byte{1};
  packet[111] ^= std::byte{1};
  CHECK_FALSE(stamp::verify_hmac(packet, key));
  // A key shorter than 16 bytes is refused.
  CHECK_FALSE(stamp::sign(packet, std::span(key).first(15)));
  CHECK_FALSE(stamp::verify_hmac(std::span(packet).first(111), key));
}

TEST_CASE("stamp: TLV walk with bounds") {
  // CoS (type 4, length 4), unknown type 200 with 2 bytes, then a TLV claiming 10 bytes of 3.
  const Bytes tlvs = bytes({0x00, 0x04, 0x00, 0x04, 0xb8, 0x00, 0x00, 0x00,  //
                            0x00, 0xc8, 0x00, 0x02, 0xaa, 0xbb,              //
                            0x00, 0x01, 0x00, 0x0a, 0x01, 0x02, 0x03});
  stamp::TlvWalker walker(tlvs);
  stamp::Tlv t;
  REQUIRE(walker.next(t));
  CHECK(t.offset == 0);
  CHECK(t.type == stamp::kTlvClassOfService);
  CHECK(t.length == 4);
  CHECK(t.value.size() == 4);
  CHECK_FALSE(t.malformed);
  REQUIRE(walker.next(t));
  CHECK(t.offset == 8);
  CHECK(t.type == 200);
  CHECK(t.value.size() == 2);
  REQUIRE(walker.next(t));
  CHECK(t.offset == 14);
  CHECK(t.malformed);
  CHECK(t.length == 10);
  CHECK(t.value.size() == 3);
  CHECK_FALSE(walker.next(t));

  // Two trailing bytes cannot hold a header.
  const Bytes cut = bytes({0x00, 0x01, 0x00, 0x00, 0x00, 0x01});
  stamp::TlvWalker w2(cut);
  REQUIRE(w2.next(t));
  CHECK_FALSE(t.malformed);
  REQUIRE(w2.next(t));
  CHECK(t.malformed);
  CHECK(t.offset == 4);
  CHECK_FALSE(w2.next(t));

  stamp::TlvWalker empty{std::span<const std::byte>()};
  CHECK_FALSE(empty.next(t));

  Bytes flagged = tlvs;
  stamp::add_tlv_flags(flagged, 8, stamp::kTlvFlagU);
  CHECK(flagged[8] == std::byte{0x80});
  stamp::add_tlv_flags(flagged, 14, stamp::kTlvFlagM);
  CHECK(flagged[14] == std::byte{0x40});
  stamp::clear_tlv_flags(flagged, 8, stamp::kTlvFlagU);
  CHECK(flagged[8] == std::byte{0x00});
  Bytes header(4);
  REQUIRE(stamp::encode_tlv_header(header, stamp::kTlvFlagI, 4, 0x0102));
  CHECK(header == bytes({0x20, 0x04, 0x01, 0x02}));
}

TEST_CASE("stamp: Class of Service TLV bits") {
  // DSCP1 = 46 (EF), DSCP2 = 10 (AF11), ECN = 1, RP = 2:
  // 101110 001010 01 10 -> 1011 1000 1010 0110 = 0xb8 0xa6
  stamp::ClassOfService cos{.dscp1 = 46, .dscp2 = 10, .ecn = 1, .rp = 2};
  Bytes value(4, std::byte{0xff});
  REQUIRE(stamp::encode_class_of_service(value, cos));
  CHECK(value == bytes({0xb8, 0xa6, 0x00, 0x00}));
  stamp::ClassOfService back;
  REQUIRE(stamp::decode_class_of_service(value, back));
  CHECK(back.dscp1 == 46);
  CHECK(back.dscp2 == 10);
  CHECK(back.ecn == 1);
  CHECK(back.rp == 2);
  CHECK_FALSE(stamp::decode_class_of_service(std::span(value).first(3), back));
}
