// Report: what a scenario measured, printed as a human table and then as one JSON line holding
// every figure (the last line of the output, for scripts).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vantage::fleet {

class Report {
 public:
  explicit Report(std::string scenario) : scenario_(std::move(scenario)) {}
  void section(const std::string& title);
  // key goes to JSON; label and unit to the table. digits: decimals shown in the table.
  void number(const std::string& key, double value, const std::string& label, const std::string& unit = {},
              int digits = 0);
  void text(const std::string& key, const std::string& value, const std::string& label);
  void flag(const std::string& key, bool value, const std::string& label);
  // Prints the table, then the JSON line.
  void print() const;

 private:
  struct Row {
    std::string key, json, label, shown;
    bool heading = false;
  };
  std::string scenario_;
  std::vector<Row> rows_;
};

std::string json_string(const std::string& s);

}  // namespace vantage::fleet
