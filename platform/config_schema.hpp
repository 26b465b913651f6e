// Config files from one declarative table of keys: each key's path, type, default, description
// and validator parse and check a TOML file, and the same table renders its Markdown reference.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "platform/log.hpp"

namespace vantage::platform::config {

enum class Kind : std::uint8_t {
  kString,
  kInteger,
  kNumber,  // an integer or a float, read as a double
  kBoolean,
  kStringList,       // every element is checked on its own
  kStringOrInteger,  // e.g. fsync = "every" or fsync = 1000
  kStringOrBoolean,  // e.g. stateful_reflector = "auto" or stateful_reflector = true
  kTableArray,       // [[targets]]: its keys are "targets[].name", ...
};

// One value found in the file, already of the key's kind.
struct Value {
  std::variant<std::string, std::int64_t, double, bool, std::vector<std::string>> data;
  std::string key;         // where it was, with indices: "targets[2].rate"
  std::uint32_t line = 0;  // 1-based

  bool is_text() const noexcept { return std::holds_alternative<std::string>(data); }
  const std::string& text() const { return std::get<std::string>(data); }
  std::int64_t integer() const { return std::get<std::int64_t>(data); }
  double number() const {
    return is_text()                              ? 0.0
           : std::holds_alternative<double>(data) ? std::get<double>(data)
                                                  : static_cast<double>(integer());
  }
  bool boolean() const { return std::get<bool>(data); }
  const std::vector<std::string>& strings() const { return std::get<std::vector<std::string>>(data); }
};

// A key that must be present; any other non-empty `required` text is a condition that the
// caller checks (the docs print it), e.g. "when collectors are set".
inline constexpr std::string_view kAlways = "always";

// What the engine needs to know about a key; Key<Draft> adds where its value goes.
struct KeyInfo {
  std::string_view path;  // "identity.agent_id"; inside [[targets]]: "targets[].rate"
  Kind kind = Kind::kString;
  std::string_view default_text;  // as the docs show it; empty when there is none
  std::string_view required;      // empty: optional; kAlways; or a condition (see kAlways)
  // The accepted values, in words: the docs' value column and the tail of every error about
  // the key ("expected a number in (0, 1000]"). For kStringList it describes one element.
  std::string_view expected;
  std::string_view description;
  // Beyond the kind: ranges, enumerations, formats. Null accepts any value of the kind.
  bool (*accept)(const Value&) = nullptr;
};

template <typename Draft>
struct Key {
  std::string_view path;
  Kind kind = Kind::kString;
  std::string_view default_text;
  std::string_view required;
  std::string_view expected;
  std::string_view description;
  bool (*accept)(const Value&) = nullptr;
  // Called for every accepted value, in file-table order (a [[targets]] element's own entry
  // comes before its keys, so apply can append the element and then fill it in).
  void (*apply)(Draft&, const Value&) = nullptr;
};

// Errors, formatted "FILE:LINE: KEY: MESSAGE" (or "FILE: KEY: MESSAGE" without a line), handed
// out in line order whatever order they were found in.
class Diagnostics {
 public:
  explicit Diagnostics(std::string file) : file_(std::move(file)) {}

  const std::string& file() const noexcept { return file_; }
  void error(std::uint32_t line, std::string_view key, std::string_view message);
  // "KEY: missing; expected EXPECTED", on the line of the closest enclosing table present.
  void missing(std::string_view key, std::string_view expected);
  // "FILE:LINE:COLUMN: MESSAGE": a syntax error has a position but no key.
  void syntax_error(std::uint32_t line, std::uint32_t column, std::string_view message);
  bool empty() const noexcept { return errors_.empty(); }
  std::vector<std::string> errors() const;

  // Concrete table path ("tls", "targets[1]") to the line of its header.
  void note_table(std::string path, std::uint32_t line);
  // Every known key the file has, valid or not ("targets[1].rate"): a key with a bad value is
  // reported as that, not also as missing.
  void note_key(std::string path);
  bool has(std::string_view key) const;

 private:
  std::string file_;
  std::vector<std::pair<std::uint32_t, std::string>> errors_;
  std::vector<std::pair<std::string, std::uint32_t>> tables_;
  std::set<std::string, std::less<>> keys_;
};

// Reads and checks the file against the keys and calls visit(key index, value) for every
// accepted value. A syntax error ends parsing ("FILE:LINE:COLUMN: MESSAGE", toml++'s own
// position); otherwise every problem is reported: unknown keys (with a suggestion), values of
// the wrong type or out of range, missing kAlways keys.
using Visitor = std::function<void(std::size_t key_index, const Value& value)>;
void parse_file(const std::filesystem::path& file, std::span<const KeyInfo> keys, const Visitor& visit,
                Diagnostics& diagnostics);
// The same over text already in memory (a test's or a fuzzer's), named diagnostics.file().
void parse_text(std::string_view text, std::span<const KeyInfo> keys, const Visitor& visit,
                Diagnostics& diagnostics);

// The reference: one Markdown table (key, value, default, description) in the keys' order.
std::string render_markdown(std::span<const KeyInfo> keys);

template <typename Draft>
std::vector<KeyInfo> key_infos(std::span<const Key<Draft>> keys) {
  std::vector<KeyInfo> infos;
  infos.reserve(keys.size());
  for (const Key<Draft>& k : keys) {
    infos.push_back(KeyInfo{k.path, k.kind, k.default_text, k.required, k.expected, k.description, k.accept});
  }
  return infos;
}

// The file, or with `text` set that text under the file's name.
template <typename Draft>
void load(const std::filesystem::path& file, std::span<const Key<Draft>> keys, Draft& draft,
          Diagnostics& diagnostics, std::optional<std::string_view> text = std::nullopt) {
  const std::vector<KeyInfo> infos = key_infos(keys);
  const Visitor apply = [&](std::size_t i, const Value& v) {
    if (keys[i].apply != nullptr) keys[i].apply(draft, v);
  };
  if (text) {
    parse_text(*text, infos, apply, diagnostics);
  } else {
    parse_file(file, infos, apply, diagnostics);
  }
}

// Validators for the common shapes; Lo/Hi are inclusive unless the name says otherwise.
template <std::int64_t Lo, std::int64_t Hi>
bool integer_in(const Value& v) {
  return !v.is_text() && v.integer() >= Lo && v.integer() <= Hi;
}
// Integer bounds for number keys too: clang 14 (the fuzz build's compiler) has no floating-point
// template parameters.
template <std::int64_t Lo, std::int64_t Hi>
bool number_above_at_most(const Value& v) {  // (Lo, Hi]
  const double x = v.number();
  return x > static_cast<double>(Lo) && x <= static_cast<double>(Hi);  // NaN fails both
}
template <std::int64_t Lo, std::int64_t Hi>
bool number_in(const Value& v) {  // [Lo, Hi]
  const double x = v.number();
  return x >= static_cast<double>(Lo) && x <= static_cast<double>(Hi);
}
bool one_of(const Value& v, std::initializer_list<std::string_view> choices);
bool non_empty_text(const Value& v);
// Printable ASCII without spaces: names, regions, identifiers.
bool token(const Value& v);
bool ip_address(const Value& v);
// A string as errors show it: in double quotes, with quotes, backslashes and control characters
// escaped (so a value cannot forge a line of the log), cut to 60 characters.
std::string quote_value(std::string_view text);
// An IP address, or a host name (letters, digits, '-', '.', '_').
bool host(const Value& v);
// "HOST:PORT" with a host() and a port 1..65535; an IPv6 address in brackets: "[2001:db8::1]:7443".
bool split_host_port(std::string_view text, std::string& host, std::uint16_t& port);
bool host_port(const Value& v);

// [log] level, the same key in every daemon's file: one wording in every reference and one set
// of names. Draft needs a platform::LogLevel log_level.
template <typename Draft>
Key<Draft> log_level_key() {
  return {"log.level", Kind::kString, "\"info\"", "", "\"error\", \"warning\", \"notice\", \"info\" or \"debug\"",
          "Lines above this level are not logged.",
          [](const Value& v) { return one_of(v, {"error", "warning", "notice", "info", "debug"}); },
          // The validator admits only names parse_log_level knows.
          [](Draft& d, const Value& v) { d.log_level = parse_log_level(v.text()).value_or(LogLevel::kInfo); }};
}

}  // namespace vantage::platform::config
