#include "platform/config_schema.hpp"

#include <arpa/inet.h>

// toml++ is confined to this file: TOML_HEADER_ONLY and TOML_EXCEPTIONS=0 come from the build
// (parse errors are values here, never exceptions).
// toml++ 3.3 asserts a precondition that its own table-header parser breaks on a header such as
// "[!x]" or "[[[a]]]" (fixed upstream after 3.3): an abort in debug builds, a compiler assumption
// (undefined behaviour) in clang release builds. With its internal checks made no-ops, NDEBUG or
// not, the parser goes on to report the syntax error it has for that case; GCC release builds
// (the packages) have no such checks anyway. fuzz/corpus/*_config/regression-table-header.
#pragma push_macro("NDEBUG")
#undef NDEBUG
#define TOML_ASSERT(expr) static_cast<void>(0)
#include <toml++/toml.h>
#pragma pop_macro("NDEBUG")

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "platform/utf8_text.hpp"

namespace vantage::platform::config {

namespace {

// The schema as a tree: a table's children by name, a table array's element keys beneath it.
struct SchemaNode {
  std::map<std::string, std::unique_ptr<SchemaNode>, std::less<>> children;
  std::vector<std::string> order;  // children's names as the keys list them
  const KeyInfo* key = nullptr;    // a leaf or a table array
  std::size_t index = 0;
};

SchemaNode build_tree(std::span<const KeyInfo> keys) {
  SchemaNode root;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    SchemaNode* node = &root;
    std::string_view rest = keys[i].path;
    while (!rest.empty()) {
      const std::size_t dot = rest.find('.');
      std::string_view part = rest.substr(0, dot);
      rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
      if (part.ends_with("[]")) part.remove_suffix(2);
      auto it = node->children.find(part);
      if (it == node->children.end()) {
        node->order.emplace_back(part);
        it = node->children.emplace(std::string(part), std::make_unique<SchemaNode>()).first;
      }
      node = it->second.get();
    }
    node->key = &keys[i];
    node->index = i;
  }
  return root;
}

std::uint32_t line_of(const toml::node& node) { return node.source().begin.line; }

std::string join(std::string_view prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : std::string(prefix) + "." + std::string(name);
}

std::string escape_text(std::string_view text, bool in_quotes);

// The value as the file spells it, so an error shows what was read. Strings always in basic
// (double-quoted) form, whichever form the file used.
std::string describe(const toml::node& node) {
  if (node.is_table()) return "a table";
  if (node.is_array_of_tables()) return "an array of tables";
  if (const toml::value<std::string>* s = node.as_string()) return quote_value(s->get());
  std::ostringstream os;
  node.visit([&](const auto& n) { os << n; });
  // toml++ prints a long array over several indented lines: here one line, escaped as any text,
  // cut between characters.
  std::string flat;
  bool line_break = false;
  for (const char c : os.str()) {
    if (c == '\n' || c == '\r' || (line_break && (c == ' ' || c == '\t'))) {
      line_break = true;
      continue;
    }
    if (line_break && !flat.empty() && flat.back() != '[') flat += ' ';
    line_break = false;
    flat += c;
  }
  std::string text = escape_text(flat, false);
  if (text.size() > 60) {
    std::size_t cut = 57;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
    text = text.substr(0, cut) + "...";
  }
  return text;
}

// A scalar key's value when the node has the key's kind: an integer is also a kNumber, and
// kStringOrInteger (kStringOrBoolean) takes either.
std::optional<decltype(Value::data)> scalar_of_kind(const toml::node& node, Kind kind) {
  using Data = decltype(Value::data);
  const bool text = kind == Kind::kString || kind == Kind::kStringOrInteger || kind == Kind::kStringOrBoolean;
  const bool integer = kind == Kind::kInteger || kind == Kind::kStringOrInteger;
  if (text && node.is_string()) return Data(std::in_place_type<std::string>, node.as_string()->get());
  if (integer && node.is_integer()) return Data(std::in_place_type<std::int64_t>, node.as_integer()->get());
  if (kind == Kind::kNumber && node.is_integer()) {
    return Data(std::in_place_type<double>, static_cast<double>(node.as_integer()->get()));
  }
  if (kind == Kind::kNumber && node.is_floating_point()) {
    return Data(std::in_place_type<double>, node.as_floating_point()->get());
  }
  if ((kind == Kind::kBoolean || kind == Kind::kStringOrBoolean) && node.is_boolean()) return Data(std::in_place_type<bool>, node.as_boolean()->get());
  return std::nullopt;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

class Walker {
 public:
  Walker(const Visitor& visit, Diagnostics& d) : visit_(visit), d_(d) {}

  void table(const toml::table& t, const SchemaNode& schema, const std::string& prefix) {
    for (const auto& [k, node] : t) {
      const std::string key = join(prefix, k.str());
      const auto it = schema.children.find(k.str());
      if (it == schema.children.end()) {
        unknown(schema, key, k.str(), k.source().begin.line);
        continue;
      }
      const SchemaNode& child = *it->second;
      d_.note_key(key);
      if (child.key == nullptr) {
        if (const toml::table* sub = node.as_table()) {
          d_.note_table(key, line_of(*sub));
          table(*sub, child, key);
        } else {
          d_.error(line_of(node), key, "expected a table ([" + key + "]), got " + describe(node));
        }
      } else if (child.key->kind == Kind::kTableArray) {
        table_array(node, child, key);
      } else {
        leaf(node, child, key);
      }
    }
    for (const std::string& name : schema.order) {
      if (!t.contains(name)) absent(*schema.children.find(name)->second, join(prefix, name));
    }
  }

 private:
  void unknown(const SchemaNode& schema, const std::string& key, std::string_view name, std::uint32_t line) {
    std::string message = "unknown key";
    std::string_view best;
    std::size_t best_distance = 3;  // beyond two edits a suggestion is more noise than help
    for (const std::string& candidate : schema.order) {
      // A unit suffix left out ("idle_timeout" for "idle_timeout_ms") counts as close.
      const bool prefix = name.size() >= 3 && candidate.starts_with(name);
      const std::size_t distance = prefix ? 1 : edit_distance(name, candidate);
      if (distance < best_distance) {
        best_distance = distance;
        best = candidate;
      }
    }
    if (!best.empty()) message += " (did you mean '" + std::string(best) + "'?)";
    d_.error(line, key, message);
  }

  // Required keys under a table the file leaves out entirely are reported too.
  void absent(const SchemaNode& node, const std::string& key) {
    if (node.key != nullptr) {
      if (node.key->required == kAlways) d_.missing(key, node.key->expected);
      return;
    }
    for (const std::string& name : node.order) absent(*node.children.find(name)->second, join(key, name));
  }

  void table_array(const toml::node& node, const SchemaNode& schema, const std::string& key) {
    const toml::array* array = node.as_array();
    if (array == nullptr || !array->is_array_of_tables()) {
      // An empty array is an array of nothing: accept it as no elements.
      if (array == nullptr || !array->empty()) {
        d_.error(line_of(node), key,
                 "expected " + std::string(schema.key->expected) + ", got " + describe(node));
        return;
      }
    }
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::table& element = *(*array)[i].as_table();
      const std::string element_key = key + "[" + std::to_string(i) + "]";
      d_.note_table(element_key, line_of(element));
      visit_(schema.index, Value{static_cast<std::int64_t>(i), element_key, line_of(element)});
      table(element, schema, element_key);
    }
  }

  void leaf(const toml::node& node, const SchemaNode& schema, const std::string& key) {
    const KeyInfo& info = *schema.key;
    const std::uint32_t line = line_of(node);
    auto wrong = [&](const std::string& where, const toml::node& n, std::string_view prefix) {
      d_.error(line_of(n), where,
               "expected " + std::string(prefix) + std::string(info.expected) + ", got " + describe(n));
    };
    Value value{std::string(), key, line};
    switch (info.kind) {
      case Kind::kString:
      case Kind::kInteger:
      case Kind::kNumber:
      case Kind::kBoolean:
      case Kind::kStringOrInteger:
      case Kind::kStringOrBoolean: {
        std::optional<decltype(Value::data)> data = scalar_of_kind(node, info.kind);
        if (!data) return wrong(key, node, "");
        value.data = std::move(*data);
        break;
      }
      case Kind::kStringList: {
        const toml::array* array = node.as_array();
        if (array == nullptr) return wrong(key, node, "a list, each ");
        std::vector<std::string> strings;
        bool ok = true;
        for (std::size_t i = 0; i < array->size(); ++i) {
          const toml::node& element = (*array)[i];
          const std::string element_key = key + "[" + std::to_string(i) + "]";
          if (!element.is_string()) {
            wrong(element_key, element, "");
            ok = false;
            continue;
          }
          const Value one{element.as_string()->get(), element_key, line_of(element)};
          if (info.accept != nullptr && !info.accept(one)) {
            wrong(element_key, element, "");
            ok = false;
            continue;
          }
          strings.push_back(one.text());
        }
        if (array->empty() && info.required == kAlways) {
          d_.error(line, key, "expected a non-empty list, got []");
          return;
        }
        if (!ok) return;
        value.data = std::move(strings);
        visit_(schema.index, value);
        return;
      }
      case Kind::kTableArray:
        return;  // handled by table_array()
    }
    if (info.accept != nullptr && !info.accept(value)) return wrong(key, node, "");
    visit_(schema.index, value);
  }

  const Visitor& visit_;
  Diagnostics& d_;
};

// Controls and the invisible characters that reorder or break a line escaped (and quotes and
// backslashes, for text shown in quotes): text as one honest line.
std::string escape_text(std::string_view text, bool in_quotes) {
  std::string out;
  for (std::size_t at = 0; at < text.size();) {
    const Utf8Sequence s = decode_utf8(text, at);
    char escaped[12];
    if (s.length == 0) {  // not from TOML, which is UTF-8, but from a caller's string
      std::snprintf(escaped, sizeof escaped, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(text[at])));
      out += escaped;
      ++at;
      continue;
    }
    const char32_t c = s.code_point;
    if (in_quotes && (c == '"' || c == '\\')) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (is_control(c) || c == 0x061c || c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) ||
               (c >= 0x2066 && c <= 0x2069) || c == 0x2028 || c == 0x2029) {
      // Controls and the invisible characters that reorder or break a line: shown, not obeyed.
      std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
      out += escaped;
    } else {
      out.append(text.substr(at, s.length));
    }
    at += s.length;
  }
  return out;
}

}  // namespace

std::string quote_value(std::string_view text) {
  std::string out = "\"" + escape_text(text, true) + "\"";
  if (out.size() > 60) {
    std::size_t cut = 57;  // never inside a character
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) --cut;
    out = out.substr(0, cut) + "...";
  }
  return out;
}

void Diagnostics::error(std::uint32_t line, std::string_view key, std::string_view message) {
  std::string text = file_;
  if (line != 0) text += ":" + std::to_string(line);
  text += ": ";
  if (!key.empty()) {
    text += key;
    text += ": ";
  }
  text += message;
  errors_.emplace_back(line, std::move(text));
}

void Diagnostics::missing(std::string_view key, std::string_view expected) {
  // The closest enclosing table that the file has: "targets[1].host" -> "targets[1]".
  std::uint32_t line = 0;
  std::string_view scope = key;
  while (line == 0) {
    const std::size_t dot = scope.rfind('.');
    if (dot == std::string_view::npos) break;
    scope = scope.substr(0, dot);
    for (const auto& [path, table_line] : tables_) {
      if (path == scope) line = table_line;
    }
  }
  error(line, key, "missing; expected " + std::string(expected));
}

void Diagnostics::syntax_error(std::uint32_t line, std::uint32_t column, std::string_view message) {
  // toml++ quotes the character it stopped at as is: a line break there would end the line.
  errors_.emplace_back(line, file_ + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " +
                                 escape_text(message, false));
}

std::vector<std::string> Diagnostics::errors() const {
  std::vector<std::pair<std::uint32_t, std::string>> sorted = errors_;
  // File order; errors without a line (missing top-level keys, the file itself) last.
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return (a.first == 0 ? UINT32_MAX : a.first) < (b.first == 0 ? UINT32_MAX : b.first);
  });
  std::vector<std::string> out;
  out.reserve(sorted.size());
  for (auto& e : sorted) out.push_back(std::move(e.second));
  return out;
}

void Diagnostics::note_table(std::string path, std::uint32_t line) {
  tables_.emplace_back(std::move(path), line);
}

void Diagnostics::note_key(std::string path) { keys_.insert(std::move(path)); }

bool Diagnostics::has(std::string_view key) const { return keys_.find(key) != keys_.end(); }

void parse_file(const std::filesystem::path& file, std::span<const KeyInfo> keys, const Visitor& visit,
                Diagnostics& diagnostics) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    diagnostics.error(0, "", std::string("cannot open: ") + std::strerror(errno));
    return;
  }
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) {
    diagnostics.error(0, "", std::string("cannot read: ") + std::strerror(errno));
    return;
  }
  parse_text(content.str(), keys, visit, diagnostics);
}

namespace {

struct TextPosition {
  std::uint32_t line = 1;
  std::uint32_t column = 1;  // in characters, as toml++ counts
};

// toml++ 3.3 reaches __builtin_unreachable (undefined behaviour) when it tests some non-ASCII
// characters for whitespace (marzer/tomlplusplus#190 and #295, fixed after 3.3). It does so
// outside strings and comments, where TOML allows only ASCII anyway (toml++ reads a bare value
// such as 250"x up to the next whitespace, ']', '}', ',' or '#', quotes included), and after a
// backslash in a basic string (escapes are ASCII; a line-ending backslash in a multi-line string
// trims the whitespace after it). This scan finds the first such character, so toml++ never sees
// it. fuzz/corpus/*_config/regression-non-ascii-*.
std::optional<TextPosition> find_non_ascii_toml_cannot_read(std::string_view text) {
  enum class In { kCode, kComment, kBasic, kLiteral, kMultiBasic, kMultiLiteral };
  In in = In::kCode;
  // Enough of the grammar to tell whether a quote opens a string: arrays and inline tables, and
  // whether a key or a value comes next.
  std::vector<char> nest;
  bool value = false;
  bool in_bare_value = false;
  TextPosition at;
  std::size_t i = text.starts_with("\xEF\xBB\xBF") ? 3 : 0;  // a BOM is toml++'s to skip
  // Moves past n bytes, counting lines and characters (a UTF-8 continuation byte is no new one).
  auto advance = [&](std::size_t n) {
    for (; n > 0 && i < text.size(); --n, ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if (c == '\n') {
        ++at.line;
        at.column = 1;
      } else if ((c & 0xC0) != 0x80) {
        ++at.column;
      }
    }
  };
  auto quotes_at = [&](char q) {
    std::size_t n = 0;
    while (i + n < text.size() && text[i + n] == q) ++n;
    return n;
  };
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (i < text.size()) {
    const char c = text[i];
    switch (in) {
      case In::kCode:
        if (static_cast<unsigned char>(c) >= 0x80) return at;
        if (in_bare_value && !is_space(c) && c != ']' && c != '}' && c != ',' && c != '#') break;
        in_bare_value = false;
        if (c == '\n' && nest.empty()) {
          value = false;
        } else if (c == '#') {
          in = In::kComment;
        } else if (c == '"' || c == '\'') {
          const bool multi = quotes_at(c) >= 3;
          in = c == '"' ? (multi ? In::kMultiBasic : In::kBasic) : (multi ? In::kMultiLiteral : In::kLiteral);
          advance(multi ? 3 : 1);
          continue;
        } else if (c == '=') {
          value = true;
        } else if ((c == '[' || c == '{') && value) {
          nest.push_back(c);
          value = c == '[';
        } else if ((c == ']' || c == '}') && !nest.empty()) {
          nest.pop_back();
          value = true;
        } else if (c == ',') {
          value = nest.empty() || nest.back() == '[';
        } else if (value && !is_space(c)) {
          in_bare_value = true;
        }
        break;
      case In::kComment:
        if (c == '\n') {
          in = In::kCode;
          continue;  // the line break as code
        }
        break;
      case In::kBasic:
      case In::kLiteral:
        if (c == '\n' || c == (in == In::kBasic ? '"' : '\'')) {
          in = In::kCode;
        } else if (c == '\\' && in == In::kBasic) {
          advance(1);  // the escaped character, which TOML allows to be ASCII only
          if (i < text.size() && static_cast<unsigned char>(text[i]) >= 0x80) return at;
        }
        break;
      case In::kMultiBasic:
      case In::kMultiLiteral: {
        const char quote = in == In::kMultiBasic ? '"' : '\'';
        if (c == quote && quotes_at(quote) >= 3) {
          advance(std::min<std::size_t>(quotes_at(quote), 5));  // up to two quotes end the content
          in = In::kCode;
          continue;
        }
        if (c == '\\' && in == In::kMultiBasic) {
          // toml++ skips the whitespace after a backslash, line breaks included (a line-ending
          // backslash trims it), testing every character it meets.
          std::size_t j = i + 1;
          while (j < text.size() && is_space(text[j])) ++j;
          const bool skipped = j > i + 1;
          advance(skipped ? j - i : 1);  // to what follows the whitespace, or the escaped character
          if (i < text.size() && static_cast<unsigned char>(text[i]) >= 0x80) return at;
          if (skipped) continue;
        }
        break;
      }
    }
    advance(1);
  }
  return std::nullopt;
}

}  // namespace

void parse_text(std::string_view text, std::span<const KeyInfo> keys, const Visitor& visit,
                Diagnostics& diagnostics) {
  if (const std::optional<TextPosition> at = find_non_ascii_toml_cannot_read(text)) {
    diagnostics.syntax_error(at->line, at->column,
                             "a non-ASCII character outside a string or comment (or right after a "
                             "backslash in a string)");
    return;
  }
  toml::parse_result parsed = toml::parse(text, diagnostics.file());
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    // toml++'s own position: the line and column where the parser gave up.
    diagnostics.syntax_error(e.source().begin.line, e.source().begin.column, e.description());
    return;
  }
  const SchemaNode root = build_tree(keys);
  Walker(visit, diagnostics).table(parsed.table(), root, "");
}

std::string render_markdown(std::span<const KeyInfo> keys) {
  // Pipes inside a cell would end it.
  auto cell = [](std::string_view text) {
    std::string out;
    for (const char c : text) {
      if (c == '|') out += '\\';
      out += c;
    }
    return out;
  };
  std::string out = "| key | value | default | description |\n|---|---|---|---|\n";
  for (const KeyInfo& k : keys) {
    std::string value;
    if (k.kind == Kind::kStringList) value = "list, each ";
    value += k.expected;
    std::string fallback;
    if (k.required == kAlways) {
      fallback = "required";
    } else if (!k.required.empty()) {
      fallback = "required " + std::string(k.required);
    } else if (!k.default_text.empty()) {
      fallback = "`" + std::string(k.default_text) + "`";
    }
    out += "| `" + std::string(k.path) + "` | " + cell(value) + " | " + cell(fallback) + " | " +
           cell(k.description) + " |\n";
  }
  return out;
}

bool one_of(const Value& v, std::initializer_list<std::string_view> choices) {
  return v.is_text() && std::find(choices.begin(), choices.end(), v.text()) != choices.end();
}

bool non_empty_text(const Value& v) { return v.is_text() && !v.text().empty(); }

bool token(const Value& v) {
  return non_empty_text(v) && v.text().size() <= 64 &&
         std::all_of(v.text().begin(), v.text().end(), [](char c) { return c > ' ' && c < 127; });
}

bool ip_address(const Value& v) {
  if (!v.is_text()) return false;
  unsigned char buffer[16];
  return ::inet_pton(AF_INET, v.text().c_str(), buffer) == 1 ||
         ::inet_pton(AF_INET6, v.text().c_str(), buffer) == 1;
}

bool host(const Value& v) {
  if (ip_address(v)) return true;
  if (!non_empty_text(v) || v.text().size() > 253) return false;
  return std::all_of(v.text().begin(), v.text().end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
  });
}

bool split_host_port(std::string_view text, std::string& host_out, std::uint16_t& port) {
  std::string_view host_part;
  std::string_view port_part;
  if (text.starts_with('[')) {
    const std::size_t close = text.find("]:");
    if (close == std::string_view::npos) return false;
    host_part = text.substr(1, close - 1);
    port_part = text.substr(close + 2);
    if (!ip_address(Value{std::string(host_part), {}, 0})) return false;
  } else {
    const std::size_t colon = text.rfind(':');
    // A bare IPv6 address has colons of its own: it needs brackets to carry a port.
    if (colon == std::string_view::npos || text.find(':') != colon) return false;
    host_part = text.substr(0, colon);
    port_part = text.substr(colon + 1);
    if (!host(Value{std::string(host_part), {}, 0})) return false;
  }
  if (port_part.empty() || port_part.size() > 5 ||
      !std::all_of(port_part.begin(), port_part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  const unsigned long p = std::stoul(std::string(port_part));
  if (p == 0 || p > 65535) return false;
  host_out = std::string(host_part);
  port = static_cast<std::uint16_t>(p);
  return true;
}

bool host_port(const Value& v) {
  std::string h;
  std::uint16_t p = 0;
  return v.is_text() && split_host_port(v.text(), h, p);
}

}  // namespace vantage::platform::config
