// Prometheus text exposition format 0.0.4: families with HELP and TYPE, escaped label values,
// histograms with cumulative buckets. Writes into a string; knows nothing about Vantage.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vantage::collector::http {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

using Label = std::pair<std::string_view, std::string_view>;
using Labels = std::vector<Label>;

// A label value with backslash, double quote and line feed escaped (\\, \", \n); invalid UTF-8
// and other control characters become U+FFFD, so the text always parses.
std::string escape_label_value(std::string_view value);
// HELP text: backslash and line feed escaped, invalid UTF-8 and control characters as above.
std::string escape_help(std::string_view text);
// A sample value: integers without a fraction, NaN and +Inf/-Inf spelled as Prometheus does,
// everything else with enough digits to round-trip.
std::string format_value(double value);

class PrometheusText {
 public:
  enum class Type { kGauge, kCounter, kHistogram, kSummary };

  // Starts a family; every sample() until the next family() belongs to it. A family without
  // samples is still valid exposition (HELP and TYPE alone).
  void family(std::string_view name, Type type, std::string_view help);
  void sample(std::string_view name, const Labels& labels, double value);
  // A whole histogram: per_bucket[i] observations in (bounds[i-1], bounds[i]], the last entry of
  // per_bucket (one more than bounds) the +Inf overflow. Written cumulatively, with _sum and _count.
  void histogram(std::string_view name, const Labels& labels, std::span<const double> bounds,
                 std::span<const std::uint64_t> per_bucket, double sum);

  const std::string& text() const noexcept { return out_; }
  std::string take() noexcept { return std::move(out_); }

 private:
  void labels(const Labels& labels, const Label* extra);
  std::string out_;
};

}  // namespace vantage::collector::http
