// One way to write JSON text: the escaping and number spelling every JSON producer shares (the
// agent's --once report, the collector's status page and its stored per-CPU/interface lists),
// as append functions for hand-assembled output and a small streaming JsonWriter on top.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

namespace vantage::platform {

enum class JsonEscape : std::uint8_t {
  kStandard,  // '"', '\\' and control characters, as JSON requires
  // Also '<' as \u003c: harmless in JSON, and never closes a <script> element if ever inlined
  // into a page; and U+2028, U+2029 as \u2028, \u2029, which end a line in older JavaScript.
  kHtmlSafe,
};

// `s` as a quoted JSON string. Bytes >= 0x20 other than '"' and '\\' pass through unchanged (the
// callers validate UTF-8 where it matters); control characters become \u00XX in lower-case hex.
inline void append_json_string(std::string& out, std::string_view s,
                               JsonEscape escape = JsonEscape::kStandard) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || (c == '<' && escape == JsonEscape::kHtmlSafe)) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else if (c == 0xe2 && escape == JsonEscape::kHtmlSafe && i + 2 < s.size() && s[i + 1] == '\x80' &&
               (s[i + 2] == '\xa8' || s[i + 2] == '\xa9')) {
      out += s[i + 2] == '\xa8' ? "\\u2028" : "\\u2029";
      i += 2;
    } else {
      out += ch;
    }
  }
  out += '"';
}

inline std::string json_string(std::string_view s, JsonEscape escape = JsonEscape::kStandard) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s, escape);
  return out;
}

namespace json_detail {
template <typename T>
void append_chars(std::string& out, T v) {
  std::array<char, 32> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  out.append(buf.data(), ec == std::errc{} ? end : buf.data());
}
}  // namespace json_detail

// Integers in full.
inline void append_json_number(std::string& out, std::int64_t v) { json_detail::append_chars(out, v); }
inline void append_json_number(std::string& out, std::uint64_t v) { json_detail::append_chars(out, v); }
inline void append_json_number(std::string& out, std::int32_t v) { append_json_number(out, std::int64_t{v}); }
inline void append_json_number(std::string& out, std::uint32_t v) { append_json_number(out, std::uint64_t{v}); }

// JSON has no NaN or infinities: those are null (an absent figure). `significant_digits` 0 is the
// shortest text that reads back as the same value (a float prints as itself: 0.25f is 0.25, not
// its double expansion); otherwise printf's %.<n>g.
inline void append_json_number(std::string& out, double v, int significant_digits = 0) {
  if (!std::isfinite(v)) {
    out += "null";
  } else if (significant_digits <= 0) {
    json_detail::append_chars(out, v);
  } else {
    char buf[40];
    const int n = std::snprintf(buf, sizeof buf, "%.*g", significant_digits, v);
    out.append(buf, n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
  }
}
inline void append_json_number(std::string& out, float v) {
  if (!std::isfinite(v)) {
    out += "null";
  } else {
    json_detail::append_chars(out, v);
  }
}

// Streaming writer: commas and colons are placed for the caller.
//   JsonWriter j; j.begin_object(); j.field("sent", 3u); j.end_object(); j.take() == R"({"sent":3})"
class JsonWriter {
 public:
  struct Options {
    JsonEscape escape = JsonEscape::kStandard;
    int double_digits = 0;  // see append_json_number(double): 0 is the shortest round trip
  };
  JsonWriter() = default;
  explicit JsonWriter(Options options) : options_(options) {}

  void begin_object() { open('{'); }
  void end_object() { close('}'); }
  void begin_array() { open('['); }
  void end_array() { close(']'); }
  void key(std::string_view k) {
    separate();
    append_json_string(out_, k, options_.escape);
    out_ += ':';
    after_key_ = true;
  }
  void value(std::string_view s) {
    separate();
    append_json_string(out_, s, options_.escape);
  }
  void value(const char* s) { value(std::string_view(s)); }
  void value(const std::string& s) { value(std::string_view(s)); }
  void value(bool b) {
    separate();
    out_ += b ? "true" : "false";
  }
  void value(std::int64_t v) {
    separate();
    append_json_number(out_, v);
  }
  void value(std::uint64_t v) {
    separate();
    append_json_number(out_, v);
  }
  void value(std::int32_t v) { value(std::int64_t{v}); }
  void value(std::uint32_t v) { value(std::uint64_t{v}); }
  void value(double v) {
    separate();
    append_json_number(out_, v, options_.double_digits);
  }
  void null() {
    separate();
    out_ += "null";
  }
  template <typename T>
  void field(std::string_view k, const T& v) {
    key(k);
    value(v);
  }
  [[nodiscard]] const std::string& str() const noexcept { return out_; }
  std::string take() {
    drained_ = false;
    return std::move(out_);
  }
  // Streams a document out in pieces: hands `sink` what is written so far (a std::string_view)
  // and empties the buffer, keeping its capacity and the writer's place in the document (the
  // next comma still comes), so a large document is never held whole.
  template <typename Sink>
  void drain(Sink&& sink) {
    sink(std::string_view(out_));
    out_.clear();
    drained_ = true;
  }

 private:
  void open(char c) {
    separate();
    out_ += c;
    first_ = true;
  }
  void close(char c) {
    out_ += c;
    first_ = false;
  }
  void separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_ && (drained_ || !out_.empty())) {
      out_ += ',';
    }
    first_ = false;
  }

  Options options_{};
  std::string out_;
  bool first_ = true;
  bool after_key_ = false;
  bool drained_ = false;  // part of this document went out through drain()
};

}  // namespace vantage::platform
