// vantage-agent's TOML config file (the daemon's full settings): identity, collectors per region,
// TLS, probe targets, reflector, samplers, spool, logging. One key table parses, checks and
// documents it (agent/config.cpp); values the file leaves out take the command line's defaults.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/cli.hpp"
#include "platform/config_schema.hpp"
#include "platform/log.hpp"

namespace vantage::agent {

struct AgentConfig {
  std::optional<AgentOptions> options;  // set exactly when errors is empty
  platform::LogLevel log_level = platform::LogLevel::kInfo;
  // Every problem found, in file order, one line each:
  // "agent.toml:12: targets[2].rate: expected a number in (0, 1000], got \"fast\"".
  std::vector<std::string> errors;
};

// Reads and checks the file. Target and collector host names are not resolved here (that
// happens in the background once the agent runs), so reading never waits for DNS.
AgentConfig load_config(const std::filesystem::path& file);
// The same over text in memory, reported under `name` (tests, the config fuzzer).
AgentConfig parse_config(std::string_view text, const std::string& name);

// The key table (for tests that hold the docs to it) and its Markdown reference.
std::vector<platform::config::KeyInfo> config_keys();
std::string config_reference_markdown();

}  // namespace vantage::agent
