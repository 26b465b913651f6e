// Config loaders report one message a line; a test prints them all when a load fails and
// compares the whole text when it expects exact messages.
#pragma once

#include <string>
#include <vector>

namespace vantage::test {

inline std::string errors_text(const std::vector<std::string>& errors) {
  std::string text;
  for (const std::string& e : errors) text += e + "\n";
  return text;
}

}  // namespace vantage::test
