// The agent's measuring pipeline: probers and the host sampler push raw samples through
// lock-free rings to one aggregator thread, which turns them into per-interval reports.
#pragma once

#include <asio/ip/address.hpp>
#include <asio/ip/udp.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "agent/aggregate/target_stats.hpp"
#include "agent/name_resolver.hpp"
#include "agent/privacy/pseudonym.hpp"
#include "agent/probes/icmp_prober.hpp"
#include "agent/probes/probe_event.hpp"
#include "agent/probes/reflector.hpp"
#include "agent/probes/stamp_reflector.hpp"
#include "agent/probes/tcp_prober.hpp"
#include "agent/probes/udp_prober.hpp"
#include "agent/samplers/host_sampler.hpp"
#include "platform/clock_state.hpp"
#include "platform/host_readers.hpp"
#include "platform/result.hpp"

namespace vantage::agent {

struct ProbeTargetSpec {
  // What reports call it: "192.0.2.1:8627", "[2001:db8::1]:443", "192.0.2.1". A client target's
  // is its pseudonym as of start-up (for start-up messages); reports carry the current one
  // (MeasurementReport::labels), so only the probers' sockets ever see its address.
  std::string label;
  probes::ProbeProtocol protocol = probes::ProbeProtocol::kUdpEcho;
  // A DNS name, resolved in the background once the measurement starts (and again every
  // MeasurementConfig::resolve.refresh, and with backoff while it fails): the target is probed
  // while the name has an address and reported unresolved while it has none. Empty: `address`
  // is an IP address given as such.
  std::string host;
  asio::ip::address address;
  std::uint16_t port = 0;  // UDP echo, STAMP and TCP; ignored for ICMP
  double rate_per_s = 1.0;
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);
  // 0: the protocol's default (UDP echo: 104 bytes, the probe header and the clock extension;
  // 56-byte ping; STAMP's 44 or 112-byte base).
  std::size_t payload_size = 0;
  std::uint8_t dscp = 0;
  bool client = false;  // a client's (player's) address: personal data, labelled by its pseudonym
  // ECMP paths: UDP echo probes rotate over this many source ports (probe seq mod paths), so
  // a multipath network spreads them over up to `paths` routes, and reports carry per-path
  // counts when it is above 1. 1..kMaxPaths; TCP and ICMP probe one path (1).
  std::uint32_t paths = 1;
  static constexpr std::uint32_t kMaxPaths = 64;
  probes::StampSenderOptions stamp;  // STAMP targets: SSID, key, timestamp format, reflector kind
};

struct MeasurementConfig {
  std::vector<ProbeTargetSpec> targets;
  // A report is emitted every report_interval (aligned to the start), and one last, partial
  // one by finish().
  std::chrono::nanoseconds report_interval = std::chrono::seconds(10);
  // Host load sampling period; 0 turns the sampler off.
  std::chrono::nanoseconds load_interval = std::chrono::seconds(1);
  std::filesystem::path host_root = "/";
  std::optional<probes::ReflectorConfig> reflector;  // nullopt: answer nobody's probes
  // The STAMP session-reflector, on the reflector's thread; nullopt: none.
  std::optional<probes::StampReflectorConfig> stamp_reflector;
  bool kernel_timestamps = true;
  probes::IcmpSocketMode icmp_mode = probes::IcmpSocketMode::kAuto;
  // How target names are retried and refreshed, and looked up (empty: getaddrinfo; tests
  // inject their own).
  ResolveSchedule resolve;
  NameResolver::Lookup lookup;
  // How client targets are pseudonymised; required when any target is a client.
  std::optional<privacy::PrivacyConfig> privacy;
  std::uint64_t sender_id = 0;  // 0: a random one per start
  // Events in flight between the probe thread and the aggregator, at most: the ring holds about
  // a second of the targets' events (two per probe), at least 1024. The aggregator is woken
  // when half of it has been pushed, at every interval close, and at least once a second (its
  // heartbeat); a full ring drops and counts.
  std::size_t event_ring_capacity = 16384;
  // The slot grid probes are sent on: every prober wakes at boundaries of this period (lowered
  // to a quarter of the shortest probe interval), randomly phased per start so that a fleet
  // does not wake in step.
  std::chrono::nanoseconds probe_slot = std::chrono::milliseconds(20);
  // [clock]: the state to assume instead of the kernel's (nullopt: the kernel's), set on the
  // process's ClockStateCell by start() (so a reload applies it too), and the one-way gate: figures
  // are reported when the error bound is below this fraction of the smaller one-way median.
  std::optional<platform::ClockState> assume_clock;
  double max_error_fraction = 0.1;
};

// Cumulative since start; read from each component's own counters when a report is made.
struct MeasurementCounters {
  probes::UdpProberCounters udp;
  probes::TcpProberCounters tcp;
  probes::IcmpProberCounters icmp;
  probes::ReflectorCounters reflector;
  probes::StampReflectorCounters stamp_reflector;
  std::uint64_t loads_dropped = 0;  // the sampler's ring was full
};

struct HostLoadRecord {
  std::int64_t wall_time_ns = 0;  // end of the sampled interval, ns since the Unix epoch
  samplers::HostLoad load;
  std::vector<platform::ReadError> errors;  // what could not be read for this sample
};

struct MeasurementReport {
  std::int64_t start_ns = 0;  // CLOCK_MONOTONIC
  std::int64_t end_ns = 0;
  std::int64_t wall_start_ns = 0;  // the same instants in ns since the Unix epoch
  std::int64_t wall_end_ns = 0;
  bool final = false;                               // the last report, made by finish()
  std::vector<aggregate::IntervalSummary> targets;  // in MeasurementConfig::targets order
  // The targets' labels for this interval, in the same order: a client target's pseudonym is
  // made here, by the aggregator, for the epoch of wall_start_ns, so it follows key rotation.
  std::vector<std::string> labels;
  // Per target, in the same order: 1 when its name had no address at the end of the interval,
  // so it was not probed (its sent and lost stay 0: unresolved is not loss).
  std::vector<std::uint8_t> unresolved;
  std::vector<HostLoadRecord> loads;  // the samples that ended in this interval
  MeasurementCounters counters;
};

// Called on the aggregator thread, once per interval; must not block for long (the rings
// fill meanwhile).
using ReportSink = std::function<void(MeasurementReport&&)>;

// Threads: one io_context thread for all probers (they share one event ring, which that
// thread alone produces into; it alone touches their sockets, so its io_context runs without
// the reactor's per-descriptor locks), one for the reflector when one is configured, one for
// the host sampler (reading
// /proc and /sys may stall on a loaded box; it must not stall probing or aggregation) and the
// aggregator, the only consumer of both rings and the only owner of the statistics.
class Measurement {
 public:
  explicit Measurement(MeasurementConfig config);
  ~Measurement();  // stop()

  Measurement(const Measurement&) = delete;
  Measurement& operator=(const Measurement&) = delete;

  // Validates the targets, opens every socket (so a busy port or a missing ICMP permission is
  // reported here, not later) and starts the threads. On failure nothing keeps running.
  [[nodiscard]] platform::Status start(ReportSink sink);

  // Ends a measurement cleanly: no new probes, then waits for the answers to those in flight
  // (the longest target timeout, plus a little for the ring), emits the final report covering
  // everything since the previous one, and stops every thread. Blocks until done.
  void finish();

  // Stops every thread at once, without a final report. Idempotent.
  void stop();

  // CLOCK_MONOTONIC time of the aggregator's latest loop pass (0 before start): the daemon's
  // watchdog stops pinging systemd when this goes stale.
  std::int64_t aggregator_heartbeat_ns() const noexcept;

  // How many targets' names have no address right now (0 before start). Any thread.
  std::size_t unresolved_targets() const noexcept;

  // The reflector's bound endpoint (to read back an ephemeral port), if one runs.
  std::optional<asio::ip::udp::endpoint> reflector_endpoint() const;
  // The STAMP reflector's, likewise.
  std::optional<asio::ip::udp::endpoint> stamp_reflector_endpoint() const;
  const MeasurementConfig& config() const noexcept { return config_; }

 private:
  struct Impl;
  MeasurementConfig config_;
  std::unique_ptr<Impl> impl_;
};

// "udp", "tcp", "icmp", "stamp".
const char* protocol_name(probes::ProbeProtocol protocol) noexcept;

// "192.0.2.1:8627", "[2001:db8::1]:8627"; ICMP targets have no port: "192.0.2.1", "2001:db8::1".
std::string target_label(probes::ProbeProtocol protocol, const asio::ip::address& address,
                         std::uint16_t port);
// The same for a name: "pop2.example.net:8627", "pop2.example.net" (ICMP); stable while the
// name's address changes.
std::string target_label(probes::ProbeProtocol protocol, const std::string& host, std::uint16_t port);

// Why a name's answer is no address to probe, or nullptr when it is one: the unspecified address
// (0.0.0.0 or ::, what DNS sinkholes answer: probing it probes this host), multicast, or the IPv4
// broadcast address (IPv4-mapped forms alike). Such a target stays unresolved.
const char* unprobeable_address(const asio::ip::address& address) noexcept;

// A client target's pseudonym at unix_seconds (the protocol and port enter the digest).
std::string client_label(privacy::Pseudonymiser& pseudonymiser, const ProbeTargetSpec& target,
                         std::int64_t unix_seconds);
// The same with a one-off pseudonymiser, at the current time: the label a client target gets
// when the command line or the config file is read.
std::string client_label_now(const privacy::PrivacyConfig& privacy, const ProbeTargetSpec& target);

// Target i's label in a report: report.labels when the aggregator made them, else the configured one.
const std::string& report_label(const MeasurementReport& report, std::span<const ProbeTargetSpec> targets,
                                std::size_t i);

}  // namespace vantage::agent
