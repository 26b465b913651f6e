// The simulator's command line: `--name value` pairs after the scenario; repeatable names keep
// every value (--collector-config-extra).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vantage::fleet {

class Options {
 public:
  // Parses argv after the scenario name; false (and error) on a malformed line.
  bool parse(int argc, char** argv, int first, std::string& error);
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string text(const std::string& name, const std::string& fallback = {}) const;
  double number(const std::string& name, double fallback) const;
  std::uint64_t count(const std::string& name, std::uint64_t fallback) const;
  std::vector<std::string> all(const std::string& name) const;
  bool flag(const std::string& name) const {
    used_[name] = true;
    return has(name);
  }
  // Names given that no scenario code asked for (typos).
  std::vector<std::string> unused() const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  mutable std::map<std::string, bool> used_;
};

}  // namespace vantage::fleet
