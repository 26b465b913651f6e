// libFuzzer target: vantage-agent's TOML config, parsed from the input as agent.toml. Besides
// crashes it traps when the result breaks its contract: options exactly when there is no error,
// every error one line naming the file, and an accepted config holding only values its key table
// admits (a labelled target at a sane rate and size, a complete identity for shipping). Loading
// resolves no names (the agent does that in the background), so no input waits on DNS.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/config.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

bool one_line(const std::string& s) {
  return std::none_of(s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; });
}

// An identity field as the key table admits it: printable ASCII without spaces, 1..64.
bool token(const std::string& s) {
  return !s.empty() && s.size() <= 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 127; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const vantage::agent::AgentConfig config = vantage::agent::parse_config(text, "agent.toml");
  check(config.options.has_value() == config.errors.empty());
  for (const std::string& e : config.errors) check(e.starts_with("agent.toml:") && one_line(e));
  if (!config.options) return 0;
  for (const vantage::agent::ProbeTargetSpec& t : config.options->measurement.targets) {
    check(!t.label.empty() && t.rate_per_s > 0 && t.rate_per_s <= 1000 && t.payload_size <= 8972);
    check(t.timeout.count() > 0);
  }
  if (const auto& shipping = config.options->shipping) {
    check(token(shipping->identity.agent_id) && token(shipping->identity.region) &&
          token(shipping->identity.pop));
    check(!shipping->collectors.empty());
    for (const auto& c : shipping->collectors) check(!c.host.empty() && c.port != 0);
  }
  return 0;
}
