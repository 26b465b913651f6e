// The rules for every string a peer fills in a Frame (ids, region, PoP, version, arch, target,
// interface and sensor names, an Ack's reason): one length bound per kind plus valid UTF-8 and no
// control characters (platform/utf8_text.hpp). The collector checks each Hello and Batch with
// them before anything of it is stored, logged or exposed; the agent's config uses the same bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "platform/utf8_text.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::wire {

enum class PeerText : std::uint8_t {
  kAgentId,          // a certificate CN: X.520 bounds it at 64
  kRegion,
  kPop,
  kSoftwareVersion,  // "1.4.0"
  kArch,             // a Debian architecture name
  kTarget,           // a name from the config, "host:port", "[v6]:port" or a pseudonym
  kInterface,        // a network interface name (the kernel's are under 16 bytes)
  kSensor,           // "thermal_zone0/x86_pkg_temp", "hwmon1/temp1_input"
  kAckReason,        // the collector's words to the agent
};

constexpr std::size_t max_bytes(PeerText kind) noexcept {
  switch (kind) {
    case PeerText::kAgentId:
    case PeerText::kRegion:
    case PeerText::kPop:
    case PeerText::kSoftwareVersion:
    case PeerText::kInterface:
      return 64;
    case PeerText::kArch:
      return 32;
    case PeerText::kTarget:
    case PeerText::kSensor:
      return 128;
    case PeerText::kAckReason:
      return 512;
  }
  return 0;
}

// Why a frame was refused: the first string that broke a rule. `reason` names the field and
// shows the start of the value escaped, e.g.
//   Batch.latency[2].target "a\nb": control character U+000A at byte 1
struct PeerTextFault {
  platform::TextFault fault = platform::TextFault::kNone;
  std::string reason;
};

// A string the agent did not choose (an interface or sensor name read from /sys, which the kernel
// lets hold any byte but '/') made to pass its kind's rules: unchanged when it does, otherwise
// escaped as log lines show it (\xNN, ...) and cut to fit, so one odd name on a host cannot get
// every batch of that agent refused.
std::string to_peer_text(std::string_view text, PeerText kind);

// One string against its kind's rules.
std::optional<PeerTextFault> check_peer_text(std::string_view field, std::string_view text, PeerText kind);
// Every string of the message: nullopt when all of them pass.
std::optional<PeerTextFault> check_hello_text(const Hello& hello);
std::optional<PeerTextFault> check_batch_text(const Batch& batch);

}  // namespace vantage::wire
