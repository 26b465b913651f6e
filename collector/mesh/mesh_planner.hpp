// The mesh: rules declared once on the collector turn the agents it has seen into each agent's
// target list. Lists are recomputed incrementally: an agent joining or leaving touches only the
// lists that name it (and its own), never the whole fleet.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <asio/ip/udp.hpp>

#include "vantage/telemetry_generated.h"

namespace vantage::collector::mesh {

// Probe settings a rule hands out.
struct ProbeSettings {
  wire::Protocol protocol = wire::Protocol::UdpEcho;
  std::uint32_t interval_ms = 1000;
  std::uint16_t payload_size = 0;  // 0: the protocol's default
  std::uint8_t dscp = 0;
  std::uint8_t paths = 1;          // ECMP source ports per target, 1..64

  friend bool operator==(const ProbeSettings&, const ProbeSettings&) = default;
};

// Who probes whom. `from_*`/`to_*` empty means any. In config, to_region "same" sets
// to_same_region (the prober's own region), "other" sets to_other_regions, a name sets to_region.
// Rules are applied in order: when two give one prober the same (host, port, protocol), the first
// rule's settings win.
struct MeshRule {
  std::string name;                // for errors and /metrics
  enum class Kind : std::uint8_t {
    // Every matching prober probes one reflector of `per_pop` agents (0: all) of every other PoP
    // matching `to_*`; the agents are each prober's lowest rendezvous hashes of (prober, target),
    // so a join or leave changes a prober's choice only where the newcomer ranks first.
    kFullMesh,
    // Like kFullMesh, but each prober takes `sample` of the matching PoPs: the lowest rendezvous
    // hashes of (prober, PoP), so a PoP appearing displaces at most one of a prober's choices.
    kSampled,
    kExtraTarget,  // agents matching `from_*` probe `host:port` (a game server, a router)
  } kind = Kind::kFullMesh;
  std::string from_region, from_pop, to_region, to_pop;  // exact match; empty: any
  bool to_same_region = false;
  bool to_other_regions = false;
  std::uint32_t sample = 0;        // kSampled: PoPs per prober
  std::uint32_t per_pop = 0;       // agents probed per target PoP (0: all of the PoP's agents)
  std::string host;                // kExtraTarget
  std::uint16_t port = 0;          // kExtraTarget
  ProbeSettings probe;
};

struct MeshRules {
  std::vector<MeshRule> rules;
  bool empty() const noexcept { return rules.empty(); }
};

// An agent as the collector saw it in its Hello (identity from its certificate).
struct MeshAgent {
  std::string agent_id;
  std::string region;
  std::string pop;
  // Empty: probes others, is probed by none. A prober takes the first reflector of a target whose
  // family (IPv4, or IPv6 not v4-mapped) it has a reflector of itself, else the target's first.
  std::vector<asio::ip::udp::endpoint> reflectors;
};

struct PlannedTarget {
  std::string host;                // IP literal for an agent's reflector
  std::uint16_t port = 0;
  ProbeSettings probe;
  std::string pop;                 // the target agent's PoP; empty for extra targets
  std::string agent_id;            // the target agent; empty for extra targets

  friend bool operator==(const PlannedTarget&, const PlannedTarget&) = default;
};

struct TargetListPlan {
  std::uint64_t version = 0;       // > every earlier version this planner gave the same agent
  // Sorted by (agent_id, host, port, protocol), so equal lists compare equal.
  std::vector<PlannedTarget> targets;
};

struct PlannerStats {
  std::size_t agents = 0;
  std::size_t pops = 0;
  std::size_t planned_targets = 0;  // over all lists
  std::uint64_t recomputed_lists = 0;  // cumulative: lists examined (patched or rebuilt) by upsert/remove
};

// Not thread-safe: one owner (or one lock) serialises every call. A plan() pointer stays valid
// until the next upsert/remove.
class MeshPlanner {
 public:
  // first_version: versions this planner hands out start above it (the collector passes the wall
  // clock in ms at start, so a restarted collector never reuses a version an agent holds).
  MeshPlanner(MeshRules rules, std::uint64_t first_version);
  ~MeshPlanner();
  MeshPlanner(const MeshPlanner&) = delete;
  MeshPlanner& operator=(const MeshPlanner&) = delete;

  // Adds or updates an agent (a new Hello). Returns the agents whose list changed (sorted by id),
  // the agent itself included when it is new or its own list changed; each has a new version.
  // An agent seen again with the same region, PoP and reflectors changes nothing: returns {}.
  std::vector<std::string> upsert(const MeshAgent& agent);
  // The same for many agents, e.g. the fleet reconnecting after a collector restart: the lists end
  // as upserting them one by one (in order) leaves them, and each changed list is named once with
  // one new version. Past an eighth of the fleet every list is rebuilt once instead of patched
  // once per agent (seconds instead of minutes for 10,000 agents).
  std::vector<std::string> upsert_many(const std::vector<MeshAgent>& agents);
  // Removes an agent (gone for good, see the collector's mesh.forget_after_s). Returns the agents
  // whose list changed.
  std::vector<std::string> remove(std::string_view agent_id);
  // The current list of an agent the planner knows, or nullptr.
  const TargetListPlan* plan(std::string_view agent_id) const;
  PlannerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector::mesh
