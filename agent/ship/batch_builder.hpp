// Turns the aggregator's reports into the frames the agent ships: a Hello per connection and a
// Batch per report, each a complete, verified-format FlatBuffers Frame (no length prefix).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/measurement.hpp"

namespace vantage::agent::ship {

struct AgentIdentity {
  std::string agent_id;  // must equal the CN of the agent's certificate
  std::string region;    // e.g. "eu-central"
  std::string pop;       // e.g. "fra1"
};

// The agent's own health (Batch.self; the fields are documented on AgentSelf in telemetry.fbs).
struct SelfMetrics {
  std::int64_t process_start_ns = 0;
  std::uint64_t config_generation = 0;
  std::uint64_t rss_bytes = 0;
  std::uint64_t cpu_user_ns = 0;
  std::uint64_t cpu_system_ns = 0;
  std::uint64_t probe_ring_dropped = 0;
  std::uint64_t load_ring_dropped = 0;
  std::uint64_t spool_records = 0;
  std::uint64_t spool_bytes = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t connect_failures = 0;
  std::uint64_t tls_failures = 0;
  std::uint64_t rejected = 0;
};

// What the Batch says about the agent and its delivery path.
struct BatchExtras {
  std::uint64_t spool_dropped = 0;  // batches dropped by the spool bound since the spool began
  std::optional<SelfMetrics> self;  // Batch.self; absent when not given
};

// Capability bits carried in Hello.capabilities.
inline constexpr std::uint64_t kCapabilityUdpEcho = 1u << 0;
inline constexpr std::uint64_t kCapabilityTcpConnect = 1u << 1;
inline constexpr std::uint64_t kCapabilityIcmp = 1u << 2;
inline constexpr std::uint64_t kCapabilityHostLoad = 1u << 3;
inline constexpr std::uint64_t kCapabilityReflector = 1u << 4;

std::vector<std::uint8_t> build_hello_frame(const AgentIdentity& identity, std::uint64_t capabilities);

// Targets are labelled as the report says (report.labels: a client target's pseudonym), else as
// configured; report.targets and targets are in the same order.
std::vector<std::uint8_t> build_batch_frame(const AgentIdentity& identity, std::uint64_t seq,
                                            const MeasurementReport& report,
                                            std::span<const ProbeTargetSpec> targets,
                                            const BatchExtras& extras);

}  // namespace vantage::agent::ship
