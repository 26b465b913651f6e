#include "bench/fleet/options.hpp"

#include <cstdlib>
#include <set>

namespace vantage::fleet {

namespace {
// Options that take no value.
const std::set<std::string> kFlags = {"keep-work-dir", "per-agent-keys", "no-victoria"};
}  // namespace

bool Options::parse(int argc, char** argv, int first, std::string& error) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      error = "unexpected argument '" + arg + "'";
      return false;
    }
    arg = arg.substr(2);
    std::string value;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (kFlags.count(arg) == 0) {
      if (i + 1 >= argc) {
        error = "--" + arg + " needs a value";
        return false;
      }
      value = argv[++i];
    }
    values_[arg].push_back(value);
  }
  return true;
}

std::string Options::text(const std::string& name, const std::string& fallback) const {
  used_[name] = true;
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

double Options::number(const std::string& name, double fallback) const {
  const std::string t = text(name);
  if (t.empty()) return fallback;
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  return end != nullptr && *end == '\0' ? v : fallback;
}

std::uint64_t Options::count(const std::string& name, std::uint64_t fallback) const {
  const double v = number(name, static_cast<double>(fallback));
  return v < 0 ? fallback : static_cast<std::uint64_t>(v);
}

std::vector<std::string> Options::all(const std::string& name) const {
  used_[name] = true;
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::vector<std::string> Options::unused() const {
  std::vector<std::string> out;
  for (const auto& [name, v] : values_) {
    if (!used_.count(name)) out.push_back(name);
  }
  return out;
}

}  // namespace vantage::fleet
