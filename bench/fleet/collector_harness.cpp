#include "bench/fleet/collector_harness.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>

#include "collector/store/sqlite_store.hpp"

namespace vantage::fleet {
namespace {

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string config_key(const std::string& line) {
  const auto eq = line.find('=');
  std::string key = line.substr(0, eq);
  key.erase(std::remove_if(key.begin(), key.end(), [](char c) { return c == ' ' || c == '\t'; }), key.end());
  return key;
}

bool CollectorHarness::prepare(const FleetPki& pki, std::string& error) {
  const auto& dir = setup_.work_dir;
  std::filesystem::create_directories(dir);
  if (!pki.write_collector_files(dir, error)) return false;
  port_ = free_port();
  if (port_ == 0) {
    error = "no free port";
    return false;
  }
  database_ = dir / "store.db";
  log_ = dir / "collector.log";
  config_ = dir / "collector.toml";
  state_dir_ = dir / "state";
  std::filesystem::create_directories(state_dir_);
  std::string regions;
  for (const auto& r : setup_.regions) regions += (regions.empty() ? "" : ", ") + toml_string(r);
  // Dotted keys at the top level, so extra lines can add any key after them.
  const std::vector<std::pair<std::string, std::string>> own = {
      {"ingest.listen", "[\"127.0.0.1:" + std::to_string(port_) + "\"]"},
      {"ingest.regions", "[" + regions + "]"},
      {"store.sink", "\"sqlite\""},
      {"store.database", toml_string(database_.string())},
      {"tls.ca", toml_string((dir / "ca.crt").string())},
      {"tls.cert", toml_string((dir / "collector.crt").string())},
      {"tls.key", toml_string((dir / "collector.key").string())},
      {"log.level", toml_string(setup_.log_level)},
  };
  std::ofstream out(config_, std::ios::trunc);
  out << "# Written by vantage-fleet for one simulator run.\n";
  for (const auto& [key, value] : own) {
    const bool replaced = std::any_of(setup_.extra_lines.begin(), setup_.extra_lines.end(),
                                      [&key](const std::string& l) { return config_key(l) == key; });
    if (!replaced) out << key << " = " << value << "\n";
  }
  for (const auto& line : setup_.extra_lines) out << line << "\n";
  out.close();
  if (!out) {
    error = "cannot write " + config_.string();
    return false;
  }
  return true;
}

bool CollectorHarness::start(std::string& error) {
  std::error_code ec;
  const std::uintmax_t from = std::filesystem::exists(log_, ec) ? std::filesystem::file_size(log_, ec) : 0;
  if (!process_.start({setup_.binary.string(), "serve", "--config", config_.string()}, log_, error)) return false;
  if (!wait_for_log(log_, from, "listening on", process_, std::chrono::seconds(60))) {
    error = "the collector did not start listening (see " + log_.string() + ")";
    process_.kill_now();
    return false;
  }
  return true;
}

std::optional<int> CollectorHarness::stop() { return process_.stop(SIGTERM, std::chrono::seconds(60)); }

asio::ip::tcp::endpoint CollectorHarness::endpoint() const {
  return {asio::ip::make_address_v4("127.0.0.1"), port_};
}

void check_agent_keys(const AgentRecord& r, const std::vector<collector::store::BatchKey>& keys,
                      StoreCheck& check) {
  std::vector<std::uint64_t> s;
  s.reserve(keys.size());
  for (const collector::store::BatchKey& k : keys) {
    if (k.incarnation == r.incarnation) {
      s.push_back(k.seq);
    } else {
      ++check.foreign;
      ++check.stored;
    }
  }
  check.acked += r.acked_through;
  std::sort(s.begin(), s.end());
  check.stored += s.size();
  std::uint64_t found = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && s[i] == s[i - 1]) {
      ++check.duplicates;
      continue;
    }
    if (s[i] >= 1 && s[i] <= r.acked_through) {
      ++found;
    } else {
      ++check.unacked_stored;
    }
  }
  check.missing += r.acked_through - found;
}

StoreCheck check_store(const std::filesystem::path& database, const std::vector<AgentRecord>& records) {
  StoreCheck check;
  auto opened = collector::store::SqliteStore::open(database.string(), {.read_only = true});
  if (!opened) {
    check.error = opened.error();
    return check;
  }
  for (const AgentRecord& r : records) {
    auto keys = opened->batch_keys(r.agent_id);
    if (!keys) {
      check.error = keys.error();
      return check;
    }
    check_agent_keys(r, *keys, check);
  }
  return check;
}

}  // namespace vantage::fleet
