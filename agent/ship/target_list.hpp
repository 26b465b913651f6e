// The mesh's target list on the agent: a TargetList frame from the collector checked whole (a bad
// one is refused whole), kept on disk so a restarted agent probes its last list while the
// collector is away, and merged with the configured targets (which always win).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/measurement.hpp"
#include "platform/result.hpp"

namespace vantage::agent::ship {

// What a list may hold. Intervals follow the config's rates ((0, 1000] probes per second) down to
// one probe an hour.
struct TargetListLimits {
  std::size_t max_targets = 20'000;
  std::uint32_t min_interval_ms = 1;
  std::uint32_t max_interval_ms = 3'600'000;
  std::uint16_t max_payload_size = 8972;  // targets[].size's bound
  std::uint8_t max_paths = 64;
};

struct MeshTargetSpec {
  ProbeTargetSpec spec;
  std::uint8_t paths = 1;  // ECMP source ports to rotate over (1..64)
  std::string pop;         // the target's PoP; may be empty
  std::string agent_id;    // the agent whose reflector this is; empty for an extra target
};

// A list that passed every check, with the verified Frame it came in (no length prefix): what
// the agent keeps on disk.
struct AcceptedTargetList {
  std::uint64_t version = 0;
  std::vector<MeshTargetSpec> targets;
  std::size_t duplicates = 0;  // entries dropped as repeats of an earlier one (same protocol, host, port)
  std::vector<std::uint8_t> frame;
};

// Verifies frame (a FlatBuffers Frame without its length prefix) as a TargetList and checks
// every target: strings by the peer-text rules, host an IP literal or a DNS name, a known
// protocol, port (none for ICMP), interval, payload size, DSCP and paths within their bounds, at
// most max_targets. The error names the first fault (peer text escaped).
platform::Result<AcceptedTargetList> accept_target_list(std::span<const std::uint8_t> frame,
                                                        const TargetListLimits& limits = {});

// The file the last accepted list is kept in, in the spool's directory.
inline constexpr const char* kTargetListFileName = "target-list.vnt";

// Writes the frame to dir/target-list.vnt atomically (a temporary file, fsync, rename, fsync of
// the directory), with a magic, length and CRC32C ahead of it.
platform::Status save_target_list(const std::filesystem::path& dir, std::span<const std::uint8_t> frame);

// The list kept in dir, if there is one that checks out; a file that does not (torn, corrupt, a
// list these limits refuse) is ignored with a warning appended to warnings.
std::optional<AcceptedTargetList> load_target_list(const std::filesystem::path& dir,
                                                   std::vector<std::string>& warnings,
                                                   const TargetListLimits& limits = {});

struct MergedTargets {
  std::vector<ProbeTargetSpec> targets;  // the local ones first, in their order, then the mesh's
  std::size_t from_mesh = 0;
  std::size_t shadowed = 0;  // mesh targets dropped because a local target has their key or label
};

// Local targets always win: a mesh target with a local target's (protocol, address or name,
// port), or its label, is left out.
MergedTargets merge_targets(const std::vector<ProbeTargetSpec>& local, const AcceptedTargetList* mesh);

// Two target sets that probe the same way (a new list that changes nothing needs no restart).
bool same_targets(const std::vector<ProbeTargetSpec>& a, const std::vector<ProbeTargetSpec>& b);

}  // namespace vantage::agent::ship
