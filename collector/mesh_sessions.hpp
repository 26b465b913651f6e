// The mesh between the ingest's sessions and the planner: Hellos and disconnects go in, each agent
// whose list changed gets its new TargetList frame on its session; one thread owns the planner, so
// a join that rebuilds thousands of lists never holds up an io thread.
#pragma once

#include <asio/ip/udp.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collector/ingest_server.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::collector {

namespace mesh {
struct MeshRules;
struct TargetListPlan;
}  // namespace mesh

// At most this many reflector addresses of one Hello are taken.
inline constexpr std::size_t kMaxReflectors = 8;

// What a Hello says for the mesh.
struct MeshHello {
  std::vector<asio::ip::udp::endpoint> reflectors;  // valid ones, deduplicated, at most kMaxReflectors
  std::uint64_t target_list_version = 0;            // the list the agent starts with (0: none)
  bool accepts_lists = false;                       // the TargetList capability bit
};

// The Hello's reflectors that another agent could probe: unspecified, multicast, broadcast and
// port 0 entries are dropped, v4-mapped addresses become IPv4.
MeshHello mesh_hello_of(const wire::Hello& hello);

// A TargetList frame (length prefix included) for a plan.
std::vector<std::uint8_t> target_list_frame(const mesh::TargetListPlan& plan);

// Hands a TargetList frame of `version` to a session; called on the mesh thread, so it must only
// post to the session's own thread.
using ListSender = std::function<void(std::vector<std::uint8_t> frame, std::uint64_t version)>;

// Threads: the calls below from any thread only queue an event; one thread applies them in
// rounds (everything queued since the last round, its Hellos given to the planner together), then
// sends each agent whose list changed its newest list once, so a reconnect storm makes one list
// per agent per round, not one per join, and past an eighth of the fleet rebuilds each list once.
class MeshSessions {
 public:
  MeshSessions(std::shared_ptr<const mesh::MeshRules> rules, std::chrono::milliseconds forget_after,
               std::uint64_t first_version);
  ~MeshSessions();  // stop()
  MeshSessions(const MeshSessions&) = delete;
  MeshSessions& operator=(const MeshSessions&) = delete;

  void start();
  // Joins the thread; events queued after it are dropped.
  void stop();

  // An accepted Hello on connection `connection` (an id unique to it). The agent joins or updates
  // the mesh; it gets its list unless its Hello named the current version.
  void hello(std::string agent_id, std::string region, std::string pop, MeshHello hello, std::uint64_t connection,
             ListSender send);
  // The agent reports running `version` (a batch's AgentSelf).
  void running(std::string agent_id, std::uint64_t connection, std::uint64_t version);
  // The connection ended; the agent leaves the mesh after forget_after unless it comes back.
  void gone(std::string agent_id, std::uint64_t connection);
  // A session replaced an unsent list with a newer one.
  void count_replaced();

  MeshCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector
