// Turns the aggregator's reports into the frames the agent ships: a Hello per connection and a
// Batch per report, each a complete, verified-format FlatBuffers Frame (no length prefix).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <flatbuffers/flatbuffers.h>

#include "agent/measurement.hpp"
#include "platform/clock_state.hpp"
#include "schemas/agent_self_fields.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::agent::ship {

struct AgentIdentity {
  std::string agent_id;  // must equal the CN of the agent's certificate
  std::string region;    // e.g. "eu-central"
  std::string pop;       // e.g. "fra1"
};

// The agent's own health (Batch.self): one member per AgentSelf field, from the one field list in
// schemas/agent_self_fields.hpp (the fields are documented on AgentSelf in telemetry.fbs).
using SelfMetrics = wire::AgentSelfValues;

// What the Batch says about the agent and its delivery path.
struct BatchExtras {
  std::uint64_t spool_dropped = 0;  // batches dropped by the spool bound since the spool began
  std::optional<SelfMetrics> self;  // Batch.self; absent when not given
  std::uint64_t target_list_version = 0;  // AgentSelf.target_list_version (with self)
  std::optional<platform::ClockState> clock;  // Batch.clock; absent when not given
};

// Capability bits carried in Hello.capabilities.
inline constexpr std::uint64_t kCapabilityUdpEcho = 1u << 0;
inline constexpr std::uint64_t kCapabilityTcpConnect = 1u << 1;
inline constexpr std::uint64_t kCapabilityIcmp = 1u << 2;
inline constexpr std::uint64_t kCapabilityHostLoad = 1u << 3;
inline constexpr std::uint64_t kCapabilityReflector = 1u << 4;
// The agent takes TargetList frames (wire::kCapabilityTargetList; the collector sends them to no
// other agent).
inline constexpr std::uint64_t kCapabilityTargetList = wire::kCapabilityTargetList;

// `incarnation` is the spool's (Spool::incarnation()): with the agent id and seq it names a batch
// at the collector. All zero (tests, tools) sends none, the legacy incarnation.
// reflectors: Hello.reflectors (IPv4 as IPv4-mapped IPv6); target_list_version: the mesh list the
// agent runs (0: none).
std::vector<std::uint8_t> build_hello_frame(const AgentIdentity& identity, std::uint64_t capabilities,
                                            const std::array<std::uint8_t, 16>& incarnation = {},
                                            std::span<const asio::ip::udp::endpoint> reflectors = {},
                                            std::uint64_t target_list_version = 0);

// Builds the Batch frames of one shipper into one FlatBuffers builder kept across batches: the
// buffer one batch grew to serves the next (no new builder, no copy into a vector per batch). A
// buffer grown past kKeptBytes by an unusually large batch is given back before the next one.
class BatchFrameBuilder {
 public:
  static constexpr std::size_t kKeptBytes = 256 * 1024;

  BatchFrameBuilder() : fbb_(4096) {}
  BatchFrameBuilder(const BatchFrameBuilder&) = delete;
  BatchFrameBuilder& operator=(const BatchFrameBuilder&) = delete;

  // As build_batch_frame; the bytes stay valid until the next build().
  std::span<const std::uint8_t> build(const AgentIdentity& identity, std::uint64_t seq,
                                      const MeasurementReport& report, std::span<const ProbeTargetSpec> targets,
                                      const BatchExtras& extras);

 private:
  flatbuffers::FlatBufferBuilder fbb_;
  std::size_t last_size_ = 0;
};

// Targets are labelled as the report says (report.labels: a client target's pseudonym), else as
// configured; report.targets and targets are in the same order.
std::vector<std::uint8_t> build_batch_frame(const AgentIdentity& identity, std::uint64_t seq,
                                            const MeasurementReport& report,
                                            std::span<const ProbeTargetSpec> targets,
                                            const BatchExtras& extras);

}  // namespace vantage::agent::ship
