#include "collector/http/prometheus_text.hpp"

#include <cassert>
#include <charconv>
#include <cmath>

#include "platform/utf8_text.hpp"

namespace vantage::collector::http {

namespace {

// The exposition format escapes backslash and newline in both places, the double quote only
// inside a label value (HELP text is not quoted). It has no escape for other bytes, and one
// invalid UTF-8 sequence fails the whole scrape ("invalid label value"): the ingest refuses such
// strings, and anything that still carries one (an older store, a future code path) shows
// U+FFFD in its place, as it does for other control characters.
std::string escape(std::string_view text, bool in_quotes) {
  static constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD
  std::string out;
  out.reserve(text.size());
  for (std::size_t at = 0; at < text.size();) {
    const platform::Utf8Sequence s = platform::decode_utf8(text, at);
    if (s.length == 0) {
      out += kReplacement;
      ++at;
      continue;
    }
    const char32_t c = s.code_point;
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"' && in_quotes) {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else if (platform::is_control(c)) {
      out += kReplacement;
    } else {
      out.append(text.substr(at, s.length));
    }
    at += s.length;
  }
  return out;
}

}  // namespace

std::string escape_label_value(std::string_view value) { return escape(value, true); }

std::string escape_help(std::string_view text) { return escape(text, false); }

std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[48];
  // Whole numbers below 2^53 print exactly and without an exponent (counters stay readable).
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, static_cast<std::int64_t>(value));
    return ec == std::errc() ? std::string(buffer, end) : std::string("NaN");
  }
  // Shortest round trip, without an exponent where that fits (0.0005 rather than 5e-04, which
  // also keeps histogram `le` labels in the form Prometheus users write them).
  if (const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed);
      ec == std::errc()) {
    return std::string(buffer, end);
  }
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  return ec == std::errc() ? std::string(buffer, end) : std::string("NaN");
}

void PrometheusText::family(std::string_view name, Type type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escape_help(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += type == Type::kGauge     ? " gauge\n"
          : type == Type::kCounter ? " counter\n"
          : type == Type::kSummary ? " summary\n"
                                   : " histogram\n";
}

void PrometheusText::labels(const Labels& labels, const Label* extra) {
  if (labels.empty() && extra == nullptr) return;
  out_ += '{';
  bool first = true;
  const auto one = [&](const Label& l) {
    if (!first) out_ += ',';
    first = false;
    out_ += l.first;
    out_ += "=\"";
    out_ += escape_label_value(l.second);
    out_ += '"';
  };
  for (const Label& l : labels) one(l);
  if (extra != nullptr) one(*extra);
  out_ += '}';
}

void PrometheusText::sample(std::string_view name, const Labels& l, double value) {
  out_ += name;
  labels(l, nullptr);
  out_ += ' ';
  out_ += format_value(value);
  out_ += '\n';
}

void PrometheusText::histogram(std::string_view name, const Labels& l, std::span<const double> bounds,
                               std::span<const std::uint64_t> per_bucket, double sum) {
  assert(per_bucket.size() == bounds.size() + 1);
  const std::string bucket = std::string(name) + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < per_bucket.size(); ++i) {
    cumulative += per_bucket[i];
    const std::string le = i < bounds.size() ? format_value(bounds[i]) : std::string("+Inf");
    const Label extra{"le", le};
    out_ += bucket;
    labels(l, &extra);
    out_ += ' ';
    out_ += format_value(static_cast<double>(cumulative));
    out_ += '\n';
  }
  sample(std::string(name) + "_sum", l, sum);
  sample(std::string(name) + "_count", l, static_cast<double>(cumulative));
}

}  // namespace vantage::collector::http
