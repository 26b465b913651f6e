// libFuzzer target: the STAMP codec (RFC 8762/8972), as the STAMP reflector (session-sender
// packets) and the session-sender (reflector packets) read datagrams from anyone. The first input
// byte picks the mode and which side decodes; the rest is the datagram. Besides crashes it traps
// when the codec disagrees with itself: a decode that does not re-encode to the same base bytes
// (MBZ and HMAC fields aside), a TLV walk that leaves the packet or does not end, or a packet
// signed with a key that then fails to verify with it (or verifies with another).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "agent/probes/stamp_packet.hpp"

namespace {

using namespace vantage::agent::probes::stamp;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

constexpr std::array<std::byte, 16> kKey{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4},
                                         std::byte{5}, std::byte{6}, std::byte{7}, std::byte{8},
                                         std::byte{9}, std::byte{10}, std::byte{11}, std::byte{12},
                                         std::byte{13}, std::byte{14}, std::byte{15}, std::byte{16}};
constexpr std::array<std::byte, 16> kOtherKey{};

bool same(const SenderPacket& a, const SenderPacket& b) {
  return a.seq == b.seq && a.timestamp == b.timestamp && a.error_estimate == b.error_estimate && a.ssid == b.ssid;
}

bool same(const ReflectorPacket& a, const ReflectorPacket& b) {
  return a.seq == b.seq && a.timestamp == b.timestamp && a.error_estimate == b.error_estimate &&
         a.ssid == b.ssid && a.receive_timestamp == b.receive_timestamp && a.sender_seq == b.sender_seq &&
         a.sender_timestamp == b.sender_timestamp && a.sender_error_estimate == b.sender_error_estimate &&
         a.sender_ttl == b.sender_ttl;
}

// The base fields of a decoded packet, written back and decoded again, are the same fields.
template <typename Packet>
void check_round_trip(std::span<const std::byte> datagram, Mode mode, const Packet& decoded,
                      bool (*encode)(std::span<std::byte>, Mode, const Packet&) noexcept,
                      bool (*decode)(std::span<const std::byte>, Mode, Packet&) noexcept) {
  const std::size_t base = base_size(mode);
  if (datagram.size() < base) return;  // a TWAMP-Light reply: shorter than the STAMP base
  std::vector<std::byte> encoded(base);
  check(encode(encoded, mode, decoded));
  Packet again;
  check(decode(encoded, mode, again));
  check(same(again, decoded));
}

void walk_tlvs(std::span<const std::byte> tlvs) {
  TlvWalker walker(tlvs);
  Tlv tlv;
  std::size_t count = 0;
  std::size_t last = 0;
  while (walker.next(tlv)) {
    check(tlv.offset + kTlvHeaderSize <= tlvs.size() || tlv.malformed);
    check(tlv.offset >= last);
    check(tlv.value.empty() || (tlv.value.data() >= tlvs.data() &&
                                tlv.value.data() + tlv.value.size() <= tlvs.data() + tlvs.size()));
    check(tlv.malformed || tlv.value.size() == tlv.length);
    last = tlv.offset + 1;
    // Each TLV takes at least its header: the walk ends within size / 4 + 1 steps.
    check(++count <= tlvs.size() / kTlvHeaderSize + 1);
    if (tlv.type == kTlvClassOfService && !tlv.malformed) {
      ClassOfService cos;
      if (decode_class_of_service(tlv.value, cos)) {
        check(cos.dscp1 < 64 && cos.dscp2 < 64 && cos.ecn < 4 && cos.rp < 4);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const Mode mode = (data[0] & 1) != 0 ? Mode::kAuthenticated : Mode::kUnauthenticated;
  const bool reflector_side = (data[0] & 2) != 0;  // the reflector decodes sender packets
  const std::span<const std::byte> datagram(reinterpret_cast<const std::byte*>(data + 1), size - 1);

  bool ok = false;
  if (reflector_side) {
    SenderPacket p;
    ok = decode_sender(datagram, mode, p);
    check(ok == (datagram.size() >= base_size(mode)));
    if (ok) check_round_trip<SenderPacket>(datagram, mode, p, encode_sender, decode_sender);
  } else {
    ReflectorPacket p;
    ok = decode_reflector(datagram, mode, p);
    if (ok) check_round_trip<ReflectorPacket>(datagram, mode, p, encode_reflector, decode_reflector);
    if (mode == Mode::kAuthenticated) check(ok == (datagram.size() >= kAuthenticatedSize));
  }
  if (!ok) return 0;
  if (datagram.size() > base_size(mode)) walk_tlvs(datagram.subspan(base_size(mode)));
  if (mode == Mode::kAuthenticated) {
    // Whatever the datagram's HMAC field holds, signing it makes it verify with that key only.
    (void)verify_hmac(datagram, kKey);
    std::vector<std::byte> signed_copy(datagram.begin(), datagram.end());
    check(sign(signed_copy, kKey));
    check(verify_hmac(signed_copy, kKey));
    check(!verify_hmac(signed_copy, kOtherKey) || std::memcmp(kKey.data(), kOtherKey.data(), 16) == 0);
  }
  return 0;
}
