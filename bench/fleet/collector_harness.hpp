// CollectorHarness: a vantage-collector run by the simulator on loopback: its certificates and
// TOML config in a work directory that survives restarts (the database and any state the
// collector keeps there), stderr captured to collector.log, started, killed and restarted.
#pragma once

#include <asio/ip/tcp.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "bench/fleet/child_process.hpp"
#include "bench/fleet/fleet.hpp"
#include "bench/fleet/fleet_pki.hpp"
#include "collector/store/sqlite_store.hpp"

namespace vantage::fleet {

struct CollectorSetup {
  std::filesystem::path binary;
  std::filesystem::path work_dir;
  std::vector<std::string> regions;
  // "key = value" lines appended to the generated config; a key given here replaces the
  // simulator's own line for it (e.g. ingest.max_connections).
  std::vector<std::string> extra_lines;
  std::string log_level = "info";
};

// The key of a "key = value" config line, blanks removed.
std::string config_key(const std::string& line);

class CollectorHarness {
 public:
  explicit CollectorHarness(CollectorSetup setup) : setup_(std::move(setup)) {}

  // Writes the certificates and config; picks the port.
  bool prepare(const FleetPki& pki, std::string& error);
  // Starts the collector and waits until it logs that it listens.
  bool start(std::string& error);
  // SIGTERM and wait; the exit status, or nullopt if it had to be killed.
  std::optional<int> stop();
  void kill9() { process_.kill_now(); }
  pid_t pid() const noexcept { return process_.pid(); }
  bool running() { return !process_.exited(); }

  asio::ip::tcp::endpoint endpoint() const;
  const std::filesystem::path& database() const noexcept { return database_; }
  const std::filesystem::path& log_path() const noexcept { return log_; }
  const std::filesystem::path& config_path() const noexcept { return config_; }
  const std::filesystem::path& state_dir() const noexcept { return state_dir_; }

 private:
  CollectorSetup setup_;
  ChildProcess process_;
  std::uint16_t port_ = 0;
  std::filesystem::path database_, log_, config_, state_dir_;
};

// The store read back after the collector stopped: every acked (agent, incarnation, seq) once.
struct StoreCheck {
  std::uint64_t acked = 0;       // batches the fleet saw acked
  std::uint64_t stored = 0;      // rows for the fleet's agents
  std::uint64_t missing = 0;     // acked but not stored
  std::uint64_t duplicates = 0;  // stored more than once
  std::uint64_t unacked_stored = 0;  // stored though never acked (in flight at the end): fine
  std::uint64_t foreign = 0;  // stored under an incarnation the agent never had
  std::string error;
};
// Adds one agent's stored batch keys (any order, repeats kept) to the check.
void check_agent_keys(const AgentRecord& record, const std::vector<collector::store::BatchKey>& keys,
                      StoreCheck& check);
StoreCheck check_store(const std::filesystem::path& database, const std::vector<AgentRecord>& records);

}  // namespace vantage::fleet
