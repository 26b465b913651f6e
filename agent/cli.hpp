// vantage-agent's command line: ad-hoc targets and one-shot runs (the TOML config file covers
// the daemon's full settings).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/measurement.hpp"
#include "agent/ship/shipper.hpp"
#include "platform/result.hpp"

namespace vantage::agent {

struct AgentOptions {
  bool show_version = false;
  bool show_help = false;
  std::optional<double> once_seconds;  // --once: measure this long, report, exit
  bool json = false;
  bool explicit_interval = false;  // --interval given (with --once: report every interval too)
  MeasurementConfig measurement;
  // Set when at least one --collector is given: reports are then spooled and shipped.
  std::optional<ship::ShipperConfig> shipping;
  std::chrono::milliseconds drain{5000};  // how long stopping waits for acks
};

// The options, or an error (Errc::kInvalid) whose message is one line naming the argument.
// Host names are not resolved here: a target's name is resolved in the background once the
// measurement runs (ProbeTargetSpec::host), so a name without an address yet stops nothing.
platform::Result<AgentOptions> parse_args(const std::vector<std::string_view>& args);

const char* usage_text() noexcept;

// Settings the command line and the config file derive the same way.
// The reflector's per-source limit: a fifth of a second's worth of burst, never below the default's.
probes::TokenBucketConfig reflector_rate_limit(std::uint32_t rate_per_s);
// A spool bounded to kib KiB; records and segments shrink with a small bound.
void set_spool_bound(ship::SpoolConfig& spool, std::uint64_t kib);
// Gives client targets their pseudonym labels and the measurement its privacy settings (the
// secret read from key_file in hmac mode); returns an error line, or "" (also when no target
// is a client).
std::string set_client_labels(MeasurementConfig& measurement, privacy::PrivacyConfig privacy,
                              const std::string& key_file);
// Hello.capabilities for the targets and reflector configured (and the mesh's target lists when
// accept_target_lists).
std::uint64_t capabilities_for(const MeasurementConfig& measurement, bool accept_target_lists = true);
// Hello.reflectors: the addresses given (reflector.announce, --announce), else the reflector's
// bound address when it is not a wildcard; none without a reflector.
std::vector<asio::ip::udp::endpoint> announced_reflectors(const MeasurementConfig& measurement,
                                                          std::vector<asio::ip::udp::endpoint> given);
// "ADDR:PORT" or "[v6]:PORT" with an IP address (not a name) and a port in 1..65535.
std::optional<asio::ip::udp::endpoint> parse_announce(std::string_view text);
// A STAMP HMAC key written as hex digits, stamp::kMinKeySize..kMaxKeySize bytes. Errors show no
// key digits.
platform::Result<std::vector<std::byte>> stamp_key_from_hex(std::string_view hex);
// The same from a file holding the hex digits (a trailing newline allowed), at most 4096 bytes and
// readable by the agent's user only (mode 0600 or 0400), as privacy.key_file.
platform::Result<std::vector<std::byte>> read_stamp_key_file(const std::string& file);

}  // namespace vantage::agent
