// What a prober hands the aggregator through its ring: one event per probe sent and one per
// answer. Probers only stamp and forward; every statistic is computed by the aggregator.
#pragma once

#include <cstdint>
#include <type_traits>

namespace vantage::agent::probes {

enum class ProbeProtocol : std::uint8_t {
  kUdpEcho = 0,     // against a Vantage reflector (probe_packet.hpp)
  kTcpConnect = 1,  // SYN -> established, then close
  kIcmpEcho = 2,    // ICMP/ICMPv6 echo request -> reply
  kStamp = 3,       // RFC 8762 STAMP session-sender, against any STAMP or TWAMP-Light reflector
};

enum class ProbeEventKind : std::uint8_t {
  kSent = 0,       // a probe left: seq and send_ns are set
  kReply = 1,      // an answer arrived: seq, send_ns (echoed or remembered), receive_ns set
  kSendError = 2,  // the probe could not be sent (or TCP: the connect was refused/reset)
};

// Fixed-size and trivially copyable so rings move it with memcpy and nothing allocates per
// probe. Times are CLOCK_MONOTONIC nanoseconds unless said otherwise.
struct ProbeEvent {
  std::uint32_t target = 0;  // index into the agent's target list
  ProbeProtocol protocol = ProbeProtocol::kUdpEcho;
  ProbeEventKind kind = ProbeEventKind::kSent;
  bool kernel_rx_timestamp = false;  // receive_ns came from SO_TIMESTAMPNS, not a clock read
  bool reflector_kernel_rx = false;  // UDP echo: the reflector's rx stamp came from its kernel
  std::uint64_t seq = 0;             // per target, starts at 0, wraps at 2^64
  std::int64_t send_ns = 0;
  std::int64_t receive_ns = 0;          // kReply only
  std::int64_t reflector_dwell_ns = 0;  // UDP echo replies: reflector tx - rx, else 0
  // UDP echo replies only: the reflector's loss-direction counters (probe_packet.hpp).
  std::uint64_t reflector_boot = 0;
  std::uint32_t session_id = 0;
  std::uint32_t session_rx = 0;
  // STAMP replies: the packet carries a wall-clock send time, not the monotonic send_ns, so
  // send_ns is 0 and the aggregator takes the one it recorded at kSent for this seq.
  bool send_ns_from_slot = false;
  // One-way delay (UDP echo replies with the reflector's clock extension, STAMP replies): set
  // when all four wall-clock timestamps were known. forward = reflector rx - sender tx,
  // backward = sender rx - reflector tx, each in ns and possibly negative (clock offset).
  bool one_way = false;
  bool sender_synchronised = false;     // this host's clock state at the reply
  bool reflector_synchronised = false;  // the reflector's Error Estimate S bit
  std::int64_t forward_ns = 0;
  std::int64_t backward_ns = 0;
  std::int64_t sender_error_ns = 0;     // each end's error estimate, ns
  std::int64_t reflector_error_ns = 0;
};

static_assert(std::is_trivially_copyable_v<ProbeEvent>);

}  // namespace vantage::agent::probes
