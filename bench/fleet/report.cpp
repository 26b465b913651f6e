#include "bench/fleet/report.hpp"

#include <cmath>
#include <cstdio>

namespace vantage::fleet {

std::string json_string(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(ch);
    } else if (c < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out.append(esc);
    } else {
      out.push_back(ch);
    }
  }
  out.push_back('"');
  return out;
}

void Report::section(const std::string& title) { rows_.push_back({{}, {}, title, {}, true}); }

void Report::number(const std::string& key, double value, const std::string& label, const std::string& unit,
                    int digits) {
  char shown[64];
  char json[64];
  if (!std::isfinite(value)) {
    std::snprintf(shown, sizeof shown, "n/a");
    std::snprintf(json, sizeof json, "null");
  } else {
    std::snprintf(shown, sizeof shown, "%.*f%s%s", digits, value, unit.empty() ? "" : " ", unit.c_str());
    if (value == std::floor(value) && std::fabs(value) < 1e15) {
      std::snprintf(json, sizeof json, "%.0f", value);
    } else {
      std::snprintf(json, sizeof json, "%.6g", value);
    }
  }
  rows_.push_back({key, json, label, shown});
}

void Report::text(const std::string& key, const std::string& value, const std::string& label) {
  rows_.push_back({key, json_string(value), label, value});
}

void Report::flag(const std::string& key, bool value, const std::string& label) {
  rows_.push_back({key, value ? "true" : "false", label, value ? "yes" : "NO"});
}

void Report::print() const {
  std::printf("\nvantage-fleet %s\n", scenario_.c_str());
  for (const Row& r : rows_) {
    if (r.heading) {
      std::printf("\n  %s\n", r.label.c_str());
    } else {
      std::printf("    %-52s %s\n", r.label.c_str(), r.shown.c_str());
    }
  }
  // Appends only: GCC 12 at -O3 warns (-Wrestrict, a false positive) on "," + std::string.
  std::string json("{\"scenario\":");
  json.append(json_string(scenario_));
  for (const Row& r : rows_) {
    if (r.heading) continue;
    json.push_back(',');
    json.append(json_string(r.key));
    json.push_back(':');
    json.append(r.json);
  }
  json.push_back('}');
  std::printf("\n%s\n", json.c_str());
  std::fflush(stdout);
}

}  // namespace vantage::fleet
