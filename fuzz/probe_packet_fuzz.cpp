// libFuzzer target: the UDP echo probe decoder, as the reflector (requests) and the prober
// (replies) read datagrams from anyone. The first input byte picks the expected kind and the
// receiver's maximum size; the rest is the datagram. Besides crashes it traps when a decode
// disagrees with the wire layout: a rejection that fills the header, an accepted size or flag
// outside the rules, or a request that does not survive being stamped into a reply unchanged
// (length, padding, the prober's fields) and decoded back.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "agent/probes/probe_packet.hpp"

namespace {

using namespace vantage::agent::probes;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

std::uint64_t load64(std::span<const std::byte> bytes, std::size_t offset) {
  std::uint64_t v = 0;
  if (bytes.size() >= offset + 8) std::memcpy(&v, bytes.data() + offset, 8);
  return v;
}

// The reflector's side: a request it accepted, turned into its reply in place.
void check_reply_round_trip(std::span<const std::byte> request, const ProbeHeader& decoded) {
  std::vector<std::byte> packet(request.begin(), request.end());
  // Stamp values from the datagram itself, so they vary with the input.
  const ReplyStamp stamp{load64(request, 8) ^ 1,
                         load64(request, 16) ^ 2,
                         load64(request, 24) ^ 3,
                         static_cast<std::uint32_t>(load64(request, 32)),
                         static_cast<std::uint32_t>(load64(request, 40)),
                         (request.size() & 1) != 0};
  stamp_reply(packet, stamp);
  ProbeHeader reply;
  check(decode_probe(packet, ProbeKind::kReply, reply) == ProbeDecodeStatus::kOk);
  check(reply.is_reply() && ((reply.flags & kFlagKernelRxTimestamp) != 0) == stamp.kernel_rx_timestamp);
  check(reply.sequence == decoded.sequence && reply.sender_id == decoded.sender_id &&
        reply.send_ns == decoded.send_ns);
  check(reply.reflector_rx_ns == stamp.rx_ns && reply.reflector_tx_ns == stamp.tx_ns &&
        reply.reflector_boot == stamp.boot && reply.session_id == stamp.session_id &&
        reply.session_rx == stamp.session_rx);
  // No amplification and no reflector memory: same length, the prober's padding returned as is.
  check(std::memcmp(packet.data() + kProbeHeaderSize, request.data() + kProbeHeaderSize,
                    request.size() - kProbeHeaderSize) == 0);
  // A reply aimed at a reflector is never answered.
  ProbeHeader as_request;
  check(decode_probe(packet, ProbeKind::kRequest, as_request) == ProbeDecodeStatus::kBadFlags);

  // The prober's side: encoding the decoded request again gives the same header bytes, except
  // the reply fields (a request may carry anything there; the reflector overwrites them).
  std::vector<std::byte> encoded(request.size());
  check(encode_request(decoded, encoded, request.size()) == request.size());
  check(std::memcmp(encoded.data(), request.data(), 32) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool reply = (data[0] & 1) != 0;
  // Receivers bound datagrams at the default MTU size or the jumbo maximum; odd bits try others.
  const std::size_t max_size = (data[0] & 2) != 0   ? kDefaultMaxProbeSize
                               : (data[0] & 4) != 0 ? kProbeHeaderSize + data[0]
                                                    : kMaxProbeSize;
  const std::span<const std::byte> datagram(reinterpret_cast<const std::byte*>(data + 1), size - 1);

  ProbeHeader untouched;
  untouched.sequence = 0x5a5a5a5a5a5a5a5a;
  ProbeHeader out = untouched;
  const ProbeDecodeStatus status =
      decode_probe(datagram, reply ? ProbeKind::kReply : ProbeKind::kRequest, out, max_size);
  check(to_string(status) != nullptr);
  if (status != ProbeDecodeStatus::kOk) {
    check(out == untouched);
    check((status == ProbeDecodeStatus::kTooShort) ==
          (datagram.size() < kProbeHeaderSize &&
           (datagram.size() < 4 || std::memcmp(data + 1, "VNTP", 4) == 0)));
    return 0;
  }
  check(datagram.size() >= kProbeHeaderSize && datagram.size() <= max_size &&
        datagram.size() <= kMaxProbeSize);
  check(std::memcmp(data + 1, "VNTP", 4) == 0 && (out.flags & ~kKnownFlags) == 0);
  check(out.is_reply() == reply && (reply || out.flags == 0));
  check(!is_malformed_probe(status));
  if (!reply) check_reply_round_trip(datagram, out);
  return 0;
}
