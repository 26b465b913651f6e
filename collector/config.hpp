// vantage-collector's TOML config file: listeners, regions served, the store, TLS, limits, the
// mesh's rules and logging. One key table parses, checks and documents it (collector/config.cpp); values the
// file leaves out take the command line's defaults.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "collector/ingest_server.hpp"
#include "collector/mesh/mesh_planner.hpp"
#include "collector/store/jetstream_sink.hpp"
#include "platform/config_schema.hpp"
#include "platform/log.hpp"

namespace vantage::collector {

struct CollectorConfig {
  std::optional<IngestConfig> options;  // set exactly when errors is empty
  // store.sink = "jetstream": where batches go instead of SQLite (options->database unused).
  std::optional<store::JetStreamOptions> jetstream;
  // [http]: /metrics and the status page; no listener, no HTTP.
  std::vector<asio::ip::tcp::endpoint> http_listen;
  std::chrono::seconds http_forget_after{3600};
  // [mesh]: the rules that make each agent's target list (empty: no lists are sent), and how long
  // a disconnected agent stays in the mesh.
  mesh::MeshRules mesh;
  std::chrono::seconds mesh_forget_after{60};
  platform::LogLevel log_level = platform::LogLevel::kInfo;
  // Every problem found, in file order, one line each:
  // "collector.toml:4: ingest.listen[1]: expected \"ADDR:PORT\" ..., got \"7443\"".
  std::vector<std::string> errors;
};

CollectorConfig load_config(const std::filesystem::path& file);
// The same over text in memory, reported under `name` (tests, the config fuzzer).
CollectorConfig parse_config(std::string_view text, const std::string& name);

// Where the TLS session-ticket keys go when tls.ticket_keys (or --ticket-keys) names no file:
// "ticket-keys" in the database's directory.
std::string default_ticket_key_file(const std::string& database);

// The key table (for tests that hold the docs to it) and its Markdown reference.
std::vector<platform::config::KeyInfo> config_keys();
std::string config_reference_markdown();

}  // namespace vantage::collector
