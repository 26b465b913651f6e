// libFuzzer target: vantage-collector's TOML config, parsed from the input as collector.toml.
// Besides crashes it traps when the result breaks its contract: options exactly when there is
// no error, every error one line naming the file, and an accepted config that the ingest server
// could not run with (no listener, no served region, a zero limit, no store).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "collector/config.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

bool one_line(const std::string& s) {
  return std::none_of(s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const vantage::collector::CollectorConfig config = vantage::collector::parse_config(text, "collector.toml");
  check(config.options.has_value() == config.errors.empty());
  for (const std::string& e : config.errors) check(e.starts_with("collector.toml:") && one_line(e));
  if (!config.options) return 0;
  const vantage::collector::IngestConfig& c = *config.options;
  check(!c.listen.empty() && !c.regions.empty());
  check(std::none_of(c.regions.begin(), c.regions.end(), [](const std::string& r) { return r.empty(); }));
  check(c.max_sessions > 0 && c.max_handshakes > 0 && c.max_frame > 0 && c.max_pending_per_connection > 0);
  check(config.jetstream ? !config.jetstream->servers.empty() : !c.database.empty());
  return 0;
}
