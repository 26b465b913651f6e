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
};

static_assert(std::is_trivially_copyable_v<ProbeEvent>);

}  // namespace vantage::agent::probes
