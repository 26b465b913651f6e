// Tests for LatencyHistogram: bucket geometry of both schemes, accuracy against exact order
// statistics on realistic and adversarial data, merging, saturation, the sparse wire form and
// the decoding of scheme 1 (older agents).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "agent/aggregate/latency_histogram.hpp"
#include "tests/agent/aggregate/allocation_counter.hpp"

namespace {

using vantage::agent::BucketLayout;
using vantage::agent::HistogramSummary;
using vantage::agent::LatencyHistogram;
using vantage::agent::SparseBucket;
using vantage::agent::SparseError;

using Values = std::vector<std::uint64_t>;

constexpr std::size_t kLast = LatencyHistogram::kBucketCount - 1;
constexpr std::uint64_t kLimit = LatencyHistogram::kOverflowThreshold;
constexpr std::uint64_t kMaxU64 = std::numeric_limits<std::uint64_t>::max();
// Midpoint reporting is off by at most half a bucket, and buckets above 511 ns are at
// most 1/256 of their lower bound wide; the requirement is 0.25 %.
constexpr double kMaxRelError = 1.0 / 512.0;
static_assert(kMaxRelError <= 0.0025);
constexpr std::size_t kSamples = 100'000;
constexpr double kPercentiles[] = {0.0, 50.0, 90.0, 99.0, 99.9, 100.0};

static_assert(sizeof(LatencyHistogram) <= 192);
static_assert(std::is_nothrow_move_constructible_v<LatencyHistogram>);
static_assert(noexcept(std::declval<LatencyHistogram&>().record(std::uint64_t{1})));
static_assert(noexcept(std::declval<LatencyHistogram&>().reset()));
static_assert(LatencyHistogram::kScheme == 2);
static_assert(LatencyHistogram::kBucketCount == 7424);
static_assert(LatencyHistogram::bucket_index(0) == 0);
static_assert(LatencyHistogram::bucket_index(511) == 511);
static_assert(LatencyHistogram::bucket_index(512) == 512);
static_assert(LatencyHistogram::bucket_index(1023) == 767);
static_assert(LatencyHistogram::bucket_index(1024) == 768);
static_assert(vantage::agent::kBucketLayout1.index(127) == 127);
static_assert(vantage::agent::kBucketLayout1.index(128) == 128);
static_assert(vantage::agent::kBucketLayout1.index(kLimit) == 1983);
static_assert(LatencyHistogram::bucket_index(kLimit - 1) == kLast);
static_assert(LatencyHistogram::bucket_index(kLimit) == kLast);
static_assert(LatencyHistogram::bucket_upper(kLast) == kLimit);

// Same definition as the histogram, computed independently.
std::size_t exact_rank(double p, std::size_t n) {
  const double r = std::ceil(p * static_cast<double>(n) / 100.0);
  if (r < 1.0) {
    return 1;
  }
  return std::min(n, static_cast<std::size_t>(r));
}

struct Moments {
  long double mean = 0;
  long double stddev = 0;
};

Moments exact_moments(const Values& values) {
  const auto n = static_cast<long double>(values.size());
  long double sum = 0;
  for (std::uint64_t v : values) {
    sum += static_cast<long double>(v);
  }
  Moments m;
  m.mean = sum / n;
  long double sq = 0;
  for (std::uint64_t v : values) {
    const long double d = static_cast<long double>(v) - m.mean;
    sq += d * d;
  }
  m.stddev = std::sqrt(sq / n);
  return m;
}

LatencyHistogram histogram_of(const Values& values) {
  LatencyHistogram h;
  for (std::uint64_t v : values) {
    h.record(v);
  }
  return h;
}

double relative_error(double got, long double expected) {
  return static_cast<double>(std::fabs(static_cast<long double>(got) - expected) / std::fabs(expected));
}

void check_mean_stddev(const LatencyHistogram& h, const Moments& exact) {
  INFO("mean ", h.mean(), " exact ", static_cast<double>(exact.mean));
  if (exact.mean == 0) {
    CHECK(h.mean() == 0.0);
  } else {
    CHECK(relative_error(h.mean(), exact.mean) <= 1e-9);
  }
  INFO("stddev ", h.stddev(), " exact ", static_cast<double>(exact.stddev));
  if (exact.stddev == 0) {
    CHECK(h.stddev() == 0.0);
  } else {
    CHECK(relative_error(h.stddev(), exact.stddev) <= 1e-6);
  }
}

void check_percentile(const LatencyHistogram& h, const Values& sorted, double p) {
  const std::uint64_t exact = sorted[exact_rank(p, sorted.size()) - 1];
  const std::uint64_t got = h.percentile(p);
  INFO("p", p, " exact ", exact, " got ", got);
  if (exact < LatencyHistogram::kExactBuckets) {
    CHECK(got == exact);
  } else if (exact < kLimit) {
    CHECK(relative_error(static_cast<double>(got), static_cast<long double>(exact)) <= kMaxRelError);
  } else {
    // Beyond the range only "at least the last bucket" is known.
    CHECK(got >= LatencyHistogram::bucket_lower(kLast));
    CHECK(got <= h.max());
  }
}

void check_against_exact(const Values& values) {
  REQUIRE(!values.empty());
  const LatencyHistogram h = histogram_of(values);
  Values sorted = values;
  std::sort(sorted.begin(), sorted.end());

  CHECK(h.count() == values.size());
  CHECK(h.min() == sorted.front());
  CHECK(h.max() == sorted.back());
  CHECK(h.dropped() == 0);
  const auto overflow = static_cast<std::uint64_t>(
      std::count_if(values.begin(), values.end(), [](std::uint64_t v) { return v >= kLimit; }));
  CHECK(h.overflow() == overflow);
  CHECK(h.percentile(0.0) == sorted.front());
  CHECK(h.percentile(100.0) == sorted.back());
  for (double p : kPercentiles) {
    check_percentile(h, sorted, p);
  }
  check_mean_stddev(h, exact_moments(values));
}

std::uint64_t to_ns(double x, double lo, double hi) {
  return static_cast<std::uint64_t>(std::llround(std::clamp(x, lo, hi)));
}

Values log_uniform(std::mt19937_64& rng, std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  Values out(n);
  for (auto& v : out) {
    v = to_ns(std::exp(u(rng)), lo, hi);
  }
  return out;
}

Values pick_from(std::mt19937_64& rng, std::size_t n, const Values& choices) {
  std::uniform_int_distribution<std::size_t> pick(0, choices.size() - 1);
  Values out(n);
  for (auto& v : out) {
    v = choices[pick(rng)];
  }
  return out;
}

struct WireForm {
  HistogramSummary summary;
  std::vector<SparseBucket> buckets;
};

WireForm wire_of(const LatencyHistogram& h) { return WireForm{h.summary(), h.to_sparse()}; }

// The message of from_sparse's error, to_string(SparseError::kNone) when it succeeded.
std::string decode_error(const WireForm& w) {
  const auto r = LatencyHistogram::from_sparse(w.summary, w.buckets);
  return r ? to_string(SparseError::kNone) : r.error();
}

void check_same_buckets(const LatencyHistogram& a, const LatencyHistogram& b) {
  CHECK(a.scheme() == b.scheme());
  CHECK(a.count() == b.count());
  CHECK(a.min() == b.min());
  CHECK(a.max() == b.max());
  CHECK(a.overflow() == b.overflow());
  CHECK(a.dropped() == b.dropped());
  CHECK(a.to_sparse() == b.to_sparse());
}

}  // namespace

TEST_CASE("latency histogram: bucket bounds are contiguous and at most 1/256 wide (1/64 in scheme 1)") {
  for (const BucketLayout& layout : {vantage::agent::kBucketLayout1, vantage::agent::kBucketLayout2}) {
    CAPTURE(int{layout.scheme});
    REQUIRE(vantage::agent::bucket_layout(layout.scheme) != nullptr);
    CHECK(vantage::agent::bucket_layout(layout.scheme)->sub_bucket_bits == layout.sub_bucket_bits);
    CHECK(layout.lower(0) == 0);
    const std::size_t n = layout.bucket_count();
    CHECK(n <= 65536);
    CHECK(n % LatencyHistogram::kPageSize == 0);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t lower = layout.lower(i);
      const std::uint64_t upper = layout.upper(i);
      const std::uint64_t mid = layout.midpoint(i);
      INFO("bucket ", i, " [", lower, ", ", upper, ")");
      REQUIRE(lower < upper);
      if (i + 1 < n) {
        REQUIRE(upper == layout.lower(i + 1));
      }
      REQUIRE(layout.index(lower) == i);
      REQUIRE(layout.index(upper - 1) == i);
      REQUIRE(mid >= lower);
      REQUIRE(mid < upper);
      if (i < layout.exact_buckets()) {
        REQUIRE(upper - lower == 1);
        REQUIRE(mid == lower);
      } else {
        REQUIRE((upper - lower) * layout.sub_buckets() <= lower);
        // Worst cases for reporting the midpoint are the two ends of the bucket.
        REQUIRE(static_cast<double>(mid - lower) / static_cast<double>(lower) <= layout.max_relative_error());
        REQUIRE(static_cast<double>(upper - 1 - mid) / static_cast<double>(upper - 1) <=
                layout.max_relative_error());
      }
    }
    CHECK(layout.upper(n - 1) == kLimit);
  }
  CHECK(vantage::agent::kBucketLayout1.max_relative_error() == 1.0 / 128.0);
  CHECK(vantage::agent::kBucketLayout2.max_relative_error() == kMaxRelError);
  CHECK(vantage::agent::bucket_layout(0) == nullptr);
  CHECK(vantage::agent::bucket_layout(3) == nullptr);
  CHECK(LatencyHistogram::bucket_upper(kLast) == kLimit);
  // Out-of-range indices are read as the last bucket rather than shifting past 64 bits.
  CHECK(LatencyHistogram::bucket_lower(kLast + 1) == LatencyHistogram::bucket_lower(kLast));
  CHECK(LatencyHistogram::bucket_upper(65535) == kLimit);
}

TEST_CASE("latency histogram: bucket index is monotonic and covers its value") {
  for (std::uint64_t v = 0; v < (1u << 17); ++v) {
    const std::size_t step = LatencyHistogram::bucket_index(v + 1) - LatencyHistogram::bucket_index(v);
    REQUIRE(step <= 1);
  }
  for (unsigned k = 9; k < 64; ++k) {
    const std::uint64_t edge = std::uint64_t{1} << k;
    for (std::uint64_t v = edge - 3; v < edge + 3; ++v) {
      const std::size_t a = LatencyHistogram::bucket_index(v);
      const std::size_t b = LatencyHistogram::bucket_index(v + 1);
      REQUIRE(a <= b);
      REQUIRE(b - a <= 1);
      REQUIRE(b <= kLast);
    }
  }
  CHECK(LatencyHistogram::bucket_index(kMaxU64) == kLast);

  std::mt19937_64 rng(0x5eed0001);
  Values values = log_uniform(rng, kSamples, 1.0, static_cast<double>(kLimit - 1));
  std::sort(values.begin(), values.end());
  std::size_t previous = 0;
  for (std::uint64_t v : values) {
    const std::size_t idx = LatencyHistogram::bucket_index(v);
    REQUIRE(idx >= previous);
    previous = idx;
    REQUIRE(LatencyHistogram::bucket_lower(idx) <= v);
    REQUIRE(v < LatencyHistogram::bucket_upper(idx));
  }
}

TEST_CASE("latency histogram: empty") {
  const LatencyHistogram h;
  CHECK(h.count() == 0);
  CHECK(h.min() == 0);
  CHECK(h.max() == 0);
  CHECK(h.mean() == 0.0);
  CHECK(h.stddev() == 0.0);
  CHECK(h.overflow() == 0);
  CHECK(h.dropped() == 0);
  for (double p : kPercentiles) {
    CHECK(h.percentile(p) == 0);
  }
  CHECK(h.to_sparse().empty());
  CHECK(h.nonzero_buckets() == 0);
}

TEST_CASE("latency histogram: log-uniform 1 us .. 60 s") {
  std::mt19937_64 rng(0x5eed0002);
  check_against_exact(log_uniform(rng, kSamples, 1e3, 60e9));
}

TEST_CASE("latency histogram: linear-uniform 1 us .. 60 s") {
  std::mt19937_64 rng(0x5eed0003);
  std::uniform_int_distribution<std::uint64_t> u(1'000, 60'000'000'000);
  Values values(kSamples);
  for (auto& v : values) {
    v = u(rng);
  }
  check_against_exact(values);
}

TEST_CASE("latency histogram: bimodal 200 us / 80 ms") {
  std::mt19937_64 rng(0x5eed0004);
  std::normal_distribution<double> fast(200e3, 20e3);
  std::normal_distribution<double> slow(80e6, 5e6);
  std::bernoulli_distribution is_slow(0.3);
  Values values(kSamples);
  for (auto& v : values) {
    v = to_ns(is_slow(rng) ? slow(rng) : fast(rng), 1e3, 60e9);
  }
  check_against_exact(values);
}

TEST_CASE("latency histogram: Pareto tail") {
  std::mt19937_64 rng(0x5eed0005);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  constexpr double kScale = 50e3;
  constexpr double kAlpha = 1.2;
  Values values(kSamples);
  for (auto& v : values) {
    v = to_ns(kScale / std::pow(1.0 - u(rng), 1.0 / kAlpha), 1e3, 60e9);
  }
  check_against_exact(values);
}

TEST_CASE("latency histogram: lognormal") {
  std::mt19937_64 rng(0x5eed0006);
  std::lognormal_distribution<double> d(std::log(1e6), 1.5);
  Values values(kSamples);
  for (auto& v : values) {
    v = to_ns(d(rng), 1e3, 60e9);
  }
  check_against_exact(values);
}

TEST_CASE("latency histogram: every value on a bucket edge") {
  Values lowers;
  Values last_in_bucket;
  for (std::size_t i = 0; i < LatencyHistogram::kBucketCount; ++i) {
    lowers.push_back(LatencyHistogram::bucket_lower(i));
    last_in_bucket.push_back(LatencyHistogram::bucket_upper(i) - 1);
  }
  SUBCASE("one of each lower bound") { check_against_exact(lowers); }
  SUBCASE("one of each upper bound - 1") { check_against_exact(last_in_bucket); }
  std::mt19937_64 rng(0x5eed0007);
  SUBCASE("random lower bounds") { check_against_exact(pick_from(rng, kSamples, lowers)); }
  SUBCASE("random upper bounds - 1") { check_against_exact(pick_from(rng, kSamples, last_in_bucket)); }
}

TEST_CASE("latency histogram: single value") {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{127}, std::uint64_t{128},
                          std::uint64_t{129}, std::uint64_t{1'000}, std::uint64_t{123'456'789}, kLimit - 1,
                          kLimit, (std::uint64_t{1} << 53) + 1, (std::uint64_t{1} << 63) + 12345, kMaxU64}) {
    CAPTURE(v);
    LatencyHistogram h;
    h.record(v);
    CHECK(h.count() == 1);
    CHECK(h.min() == v);
    CHECK(h.max() == v);
    CHECK(h.overflow() == (v >= kLimit ? 1u : 0u));
    for (double p : kPercentiles) {
      CHECK(h.percentile(p) == v);
    }
    CHECK(h.mean() == static_cast<double>(v));
    CHECK(h.stddev() == 0.0);
  }
}

TEST_CASE("latency histogram: constant values") {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{127}, std::uint64_t{128},
                          std::uint64_t{123'456'789}, kLimit - 1, kLimit + 12345}) {
    CAPTURE(v);
    const Values values(kSamples, v);
    check_against_exact(values);
    CHECK(histogram_of(values).stddev() == 0.0);
  }
}

TEST_CASE("latency histogram: exact region and the 511/512 boundary") {
  std::mt19937_64 rng(0x5eed0008);
  // Zeros mixed with values uniform in [0, max].
  auto zeros_and_up_to = [&rng](std::uint64_t max) {
    std::uniform_int_distribution<std::uint64_t> u(0, max);
    Values values(kSamples);
    for (auto& v : values) {
      v = u(rng) < 100 ? 0 : u(rng);
    }
    return values;
  };
  SUBCASE("zeros and small values") { check_against_exact(zeros_and_up_to(200)); }
  SUBCASE("zeros and values up to 1000") { check_against_exact(zeros_and_up_to(1000)); }
  SUBCASE("510..513") { check_against_exact(pick_from(rng, kSamples, {510, 511, 512, 513})); }
  SUBCASE("511 and 512 only") { check_against_exact(pick_from(rng, kSamples, {511, 512})); }
}

TEST_CASE("latency histogram: top of range and overflow") {
  std::mt19937_64 rng(0x5eed0009);
  SUBCASE("2^36 - 1 and the last bucket's lower bound") {
    check_against_exact(pick_from(rng, kSamples, {kLimit - 1, LatencyHistogram::bucket_lower(kLast)}));
  }
  SUBCASE("values above 2^36") {
    Values values = log_uniform(rng, kSamples, 1e3, 60e9);
    std::uniform_int_distribution<std::uint64_t> beyond(kLimit, kLimit << 4);
    for (std::size_t i = 0; i < values.size(); i += 20) {
      values[i] = beyond(rng);
    }
    values[7] = kLimit;
    values[11] = kMaxU64;
    check_against_exact(values);
    const LatencyHistogram h = histogram_of(values);
    CHECK(h.overflow() == kSamples / 20 + 2);
    CHECK(h.max() == kMaxU64);
    CHECK(h.bucket_count(kLast) >= h.overflow());
  }
}

TEST_CASE("latency histogram: stddev far below the mean") {
  std::mt19937_64 rng(0x5eed000a);
  std::uniform_int_distribution<std::uint64_t> jitter(0, 20);
  Values values(kSamples);
  for (auto& v : values) {
    v = 50'000'000'000 + jitter(rng);
  }
  check_against_exact(values);

  SUBCASE("first sample is an outlier") {
    values[0] = 1'000;
    check_against_exact(values);
  }
  SUBCASE("merged from parts") {
    LatencyHistogram merged;
    for (std::size_t start = 0; start < values.size(); start += 7'919) {
      const std::size_t end = std::min(values.size(), start + 7'919);
      REQUIRE(merged.merge(histogram_of(Values(values.begin() + static_cast<std::ptrdiff_t>(start),
                                               values.begin() + static_cast<std::ptrdiff_t>(end)))));
    }
    check_mean_stddev(merged, exact_moments(values));
  }
}

TEST_CASE("latency histogram: percentile argument edge cases") {
  LatencyHistogram h;
  for (std::uint64_t v = 1'000; v <= 100'000; v += 1'000) {
    h.record(v);
  }
  CHECK(h.percentile(-5.0) == 1'000);
  CHECK(h.percentile(std::numeric_limits<double>::quiet_NaN()) == 1'000);
  CHECK(h.percentile(250.0) == 100'000);
  CHECK(h.percentile(std::numeric_limits<double>::infinity()) == 100'000);
  // rank = ceil(p * 100 / 100): p1 is the first sample, p1.01 the second.
  CHECK(h.percentile(1.0) == 1'000);
  CHECK(relative_error(static_cast<double>(h.percentile(1.01)), 2'000) <= kMaxRelError);
}

TEST_CASE("latency histogram: record_n and record_signed and reset") {
  LatencyHistogram a;
  LatencyHistogram b;
  for (int i = 0; i < 37; ++i) {
    a.record(4'321);
  }
  a.record(99);
  b.record_n(4'321, 37);
  b.record_n(99, 1);
  b.record_n(12345, 0);
  check_same_buckets(a, b);
  CHECK(b.mean() == doctest::Approx(a.mean()).epsilon(1e-12));
  CHECK(b.stddev() == doctest::Approx(a.stddev()).epsilon(1e-9));

  LatencyHistogram s;
  s.record_signed(-1);
  s.record_signed(std::numeric_limits<std::int64_t>::min());
  CHECK(s.count() == 0);
  CHECK(s.dropped() == 2);
  CHECK(s.min() == 0);
  s.record_signed(500);
  CHECK(s.count() == 1);
  CHECK(s.min() == 500);
  CHECK(s.percentile(50) == 500);

  a.reset();
  check_same_buckets(a, LatencyHistogram{});
  CHECK(a.mean() == 0.0);
  a.record(7'000);
  a.record(9'000);
  CHECK(a.mean() == 8'000.0);
  CHECK(a.stddev() == 1'000.0);
}

TEST_CASE("latency histogram: merge equals recording everything into one") {
  std::mt19937_64 rng(0x5eed000b);
  // Parts with very different locations, so the merged shifts disagree.
  Values all;
  std::vector<Values> parts;
  parts.push_back(log_uniform(rng, 30'000, 1e3, 1e6));
  parts.push_back(log_uniform(rng, 30'000, 10e6, 60e9));
  parts.push_back(Values(1'000, 777));
  parts.push_back(Values{kLimit + 5, kMaxU64});
  parts.push_back(log_uniform(rng, 30'000, 100e3, 200e3));
  for (const Values& p : parts) {
    all.insert(all.end(), p.begin(), p.end());
  }
  const LatencyHistogram single = histogram_of(all);

  LatencyHistogram sequential;
  for (const Values& p : parts) {
    REQUIRE(sequential.merge(histogram_of(p)));
  }
  check_same_buckets(sequential, single);
  check_mean_stddev(sequential, exact_moments(all));

  LatencyHistogram left = histogram_of(parts[0]);
  REQUIRE(left.merge(histogram_of(parts[1])));
  LatencyHistogram right = histogram_of(parts[2]);
  REQUIRE(right.merge(histogram_of(parts[3])));
  REQUIRE(right.merge(histogram_of(parts[4])));
  REQUIRE(right.merge(left));
  check_same_buckets(right, single);
  check_mean_stddev(right, exact_moments(all));

  // Recording after a merge continues from the re-centred state.
  Values extended = all;
  extended.insert(extended.end(), parts[0].begin(), parts[0].end());
  for (std::uint64_t v : parts[0]) {
    right.record(v);
  }
  check_same_buckets(right, histogram_of(extended));
  check_mean_stddev(right, exact_moments(extended));

  for (double p : kPercentiles) {
    CHECK(sequential.percentile(p) == single.percentile(p));
  }
}

TEST_CASE("latency histogram: merge with empty and with itself") {
  std::mt19937_64 rng(0x5eed000c);
  const Values values = log_uniform(rng, 10'000, 1e3, 1e9);
  const LatencyHistogram h = histogram_of(values);

  LatencyHistogram into_empty;
  REQUIRE(into_empty.merge(h));
  check_same_buckets(into_empty, h);
  CHECK(into_empty.mean() == h.mean());

  LatencyHistogram with_empty = h;
  REQUIRE(with_empty.merge(LatencyHistogram{}));
  check_same_buckets(with_empty, h);
  CHECK(with_empty.stddev() == h.stddev());

  LatencyHistogram dropped_only;
  dropped_only.record_signed(-3);
  REQUIRE(with_empty.merge(dropped_only));
  CHECK(with_empty.dropped() == 1);
  REQUIRE(into_empty.merge(dropped_only));
  CHECK(into_empty.dropped() == 1);

  LatencyHistogram doubled = h;
  REQUIRE(doubled.merge(doubled));
  Values twice = values;
  twice.insert(twice.end(), values.begin(), values.end());
  check_same_buckets(doubled, histogram_of(twice));
  check_mean_stddev(doubled, exact_moments(twice));
}

TEST_CASE("latency histogram: bucket counters saturate instead of wrapping") {
  const std::uint32_t limit = LatencyHistogram::kBucketLimit;
  LatencyHistogram h;
  h.record_n(1'000, limit - 5);
  h.record_n(1'000, 10);
  CHECK(h.bucket_count(LatencyHistogram::bucket_index(1'000)) == limit);
  CHECK(h.count() == limit);
  CHECK(h.dropped() == 5);
  h.record(1'001);  // same bucket
  CHECK(h.dropped() == 6);
  CHECK(h.count() == limit);
  h.record(50'000);
  CHECK(h.count() == std::uint64_t{limit} + 1);
  CHECK(h.max() == 50'000);
  CHECK(h.percentile(50) == LatencyHistogram::bucket_midpoint(LatencyHistogram::bucket_index(1'000)));
  CHECK(h.percentile(100) == 50'000);
  CHECK(h.mean() == doctest::Approx(1'000.0).epsilon(1e-6));

  SUBCASE("merge saturates and stays decodable") {
    LatencyHistogram other;
    other.record_n(1'000, 100);
    other.record_n(2'000, 3);
    REQUIRE(h.merge(other));
    CHECK(h.bucket_count(LatencyHistogram::bucket_index(1'000)) == limit);
    CHECK(h.count() == std::uint64_t{limit} + 4);
    CHECK(h.dropped() == 106);
    CHECK(h.mean() == doctest::Approx(1'000.0).epsilon(1e-6));
    const WireForm w = wire_of(h);
    const auto decoded = LatencyHistogram::from_sparse(w.summary, w.buckets);
    REQUIRE(decoded);
    check_same_buckets(*decoded, h);
  }
  SUBCASE("overflow bucket saturating keeps overflow <= bucket") {
    LatencyHistogram big;
    big.record_n(kLimit * 2, limit);
    REQUIRE(big.merge(big));
    CHECK(big.overflow() == limit);
    CHECK(big.count() == limit);
    CHECK(big.dropped() == limit);
    const WireForm w = wire_of(big);
    CHECK(LatencyHistogram::from_sparse(w.summary, w.buckets));
  }
}

TEST_CASE("latency histogram: sparse round trip") {
  std::mt19937_64 rng(0x5eed000d);
  std::vector<Values> cases;
  cases.push_back(log_uniform(rng, kSamples, 1e3, 60e9));
  cases.push_back(Values(100, 0));
  cases.push_back(Values{42});
  cases.push_back(Values{5, kLimit - 1, kLimit, kMaxU64});
  cases.push_back(Values(10, kLimit + 1));
  for (const Values& values : cases) {
    LatencyHistogram h = histogram_of(values);
    h.record_signed(-1);
    const WireForm w = wire_of(h);

    std::vector<SparseBucket> visited;
    h.for_each_nonzero([&visited](SparseBucket b) { visited.push_back(b); });
    CHECK(visited == w.buckets);
    CHECK(w.buckets.size() == h.nonzero_buckets());
    for (std::size_t i = 1; i < w.buckets.size(); ++i) {
      REQUIRE(w.buckets[i - 1].index < w.buckets[i].index);
    }

    const auto decoded = LatencyHistogram::from_sparse(w.summary, w.buckets);
    REQUIRE(decoded);
    CHECK(decoded.status());
    CHECK(decoded.error().empty());
    const LatencyHistogram& r = *decoded;
    check_same_buckets(r, h);
    CHECK(r.mean() == h.mean());
    CHECK(r.stddev() == doctest::Approx(h.stddev()).epsilon(1e-12));
    for (double p = 0.0; p <= 100.0; p += 0.5) {
      REQUIRE(r.percentile(p) == h.percentile(p));
    }
    CHECK(r.to_sparse() == w.buckets);

    // A decoded histogram merges like the original.
    LatencyHistogram via_wire = r;
    REQUIRE(via_wire.merge(r));
    LatencyHistogram direct = h;
    REQUIRE(direct.merge(h));
    check_same_buckets(via_wire, direct);
    CHECK(via_wire.mean() == doctest::Approx(direct.mean()).epsilon(1e-12));
    CHECK(via_wire.stddev() == doctest::Approx(direct.stddev()).epsilon(1e-9));
  }

  LatencyHistogram only_dropped;
  only_dropped.record_signed(-9);
  const WireForm w = wire_of(only_dropped);
  const auto decoded = LatencyHistogram::from_sparse(w.summary, w.buckets);
  REQUIRE(decoded);
  CHECK(decoded->count() == 0);
  CHECK(decoded->dropped() == 1);
}

TEST_CASE("latency histogram: from_sparse rejects malformed input") {
  LatencyHistogram h;
  for (std::uint64_t v : {std::uint64_t{3}, std::uint64_t{900}, std::uint64_t{1'500'000},
                          std::uint64_t{2'000'000}, std::uint64_t{7'000'000'000}}) {
    h.record_n(v, 3);
  }
  const WireForm valid = wire_of(h);
  REQUIRE(valid.buckets.size() == 5);
  REQUIRE(decode_error(valid) == to_string(SparseError::kNone));

  auto expect = [](const WireForm& w, SparseError error) {
    const auto result = LatencyHistogram::from_sparse(w.summary, w.buckets);
    CHECK_FALSE(result);
    CHECK_FALSE(result.has_value());
    CHECK(result.code() == vantage::platform::Errc::kInvalid);
    CHECK(result.error() == to_string(error));
  };

  SUBCASE("scheme") {
    WireForm w = valid;
    w.summary.scheme = LatencyHistogram::kScheme + 1;
    expect(w, SparseError::kUnknownScheme);
  }
  SUBCASE("index out of range") {
    WireForm w = valid;
    w.buckets.back().index = static_cast<std::uint16_t>(LatencyHistogram::kBucketCount);
    expect(w, SparseError::kIndexOutOfRange);
    w.buckets.back().index = 65535;
    expect(w, SparseError::kIndexOutOfRange);
  }
  SUBCASE("indices not strictly increasing") {
    WireForm w = valid;
    w.buckets[2].index = w.buckets[1].index;
    expect(w, SparseError::kIndexNotIncreasing);
    w = valid;
    std::swap(w.buckets[1], w.buckets[2]);
    expect(w, SparseError::kIndexNotIncreasing);
  }
  SUBCASE("zero count") {
    WireForm w = valid;
    w.buckets[1].count = 0;
    w.summary.count -= 3;
    expect(w, SparseError::kZeroCount);
  }
  SUBCASE("count mismatch") {
    WireForm w = valid;
    w.summary.count += 1;
    expect(w, SparseError::kCountMismatch);
    w.summary.count = valid.summary.count - 1;
    expect(w, SparseError::kCountMismatch);
    w.summary.count = kMaxU64;
    expect(w, SparseError::kCountMismatch);
    w = valid;
    w.buckets.pop_back();  // truncated list
    expect(w, SparseError::kCountMismatch);
  }
  SUBCASE("bounds") {
    WireForm w = valid;
    w.summary.min_ns = 4;
    expect(w, SparseError::kBoundsMismatch);
    w = valid;
    w.summary.max_ns = 8'000'000'000;
    expect(w, SparseError::kBoundsMismatch);
    w = valid;
    std::swap(w.summary.min_ns, w.summary.max_ns);
    expect(w, SparseError::kBoundsMismatch);
    // One sample, but min and max differ within its bucket.
    WireForm one = wire_of(histogram_of(Values{1'000'000}));
    one.summary.max_ns += 1;
    expect(one, SparseError::kBoundsMismatch);
  }
  SUBCASE("overflow") {
    WireForm w = valid;
    w.summary.overflow = 1;
    expect(w, SparseError::kOverflowMismatch);

    LatencyHistogram big;
    big.record_n(1'000, 2);
    big.record_n(kLimit - 1, 2);
    big.record_n(kLimit + 1, 2);
    const WireForm valid_big = wire_of(big);
    REQUIRE(decode_error(valid_big) == to_string(SparseError::kNone));
    w = valid_big;
    w.summary.overflow = 0;
    expect(w, SparseError::kOverflowMismatch);
    w.summary.overflow = 5;  // last bucket holds only 4
    expect(w, SparseError::kOverflowMismatch);

    const WireForm all_over = wire_of(histogram_of(Values{kLimit, kLimit + 9, kLimit - 1}));
    REQUIRE(decode_error(all_over) == to_string(SparseError::kNone));
    w = all_over;
    w.summary.min_ns = kLimit;  // then every sample overflows, but only 2 are counted
    expect(w, SparseError::kOverflowMismatch);
  }
  SUBCASE("moments") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    for (double mean : {nan, inf, -inf, 2.0, 7'000'000'001.0}) {
      CAPTURE(mean);
      WireForm w = valid;
      w.summary.mean_ns = mean;
      expect(w, SparseError::kBadMoments);
    }
    for (double stddev : {nan, inf, -1.0, 7'000'000'000.0}) {
      CAPTURE(stddev);
      WireForm w = valid;
      w.summary.stddev_ns = stddev;
      expect(w, SparseError::kBadMoments);
    }
  }
  SUBCASE("empty with leftovers") {
    WireForm w;
    REQUIRE(decode_error(w) == to_string(SparseError::kNone));
    w.summary.max_ns = 5;
    expect(w, SparseError::kBoundsMismatch);
    w = WireForm{};
    w.summary.overflow = 1;
    expect(w, SparseError::kOverflowMismatch);
    w = WireForm{};
    w.summary.mean_ns = 1.0;
    expect(w, SparseError::kBadMoments);
    w = WireForm{};
    w.summary.count = 1;
    expect(w, SparseError::kCountMismatch);
  }
  SUBCASE("every bucket full is accepted, one more sample is not") {
    WireForm w;
    for (std::size_t i = 0; i < LatencyHistogram::kBucketCount; ++i) {
      w.buckets.push_back(SparseBucket{static_cast<std::uint16_t>(i), LatencyHistogram::kBucketLimit});
    }
    w.summary.count = std::uint64_t{LatencyHistogram::kBucketLimit} * LatencyHistogram::kBucketCount;
    w.summary.min_ns = 0;
    w.summary.max_ns = kLimit - 1;
    w.summary.mean_ns = 1e9;
    w.summary.stddev_ns = 1e9;
    const auto decoded = LatencyHistogram::from_sparse(w.summary, w.buckets);
    REQUIRE(decoded);
    CHECK(decoded->count() == w.summary.count);
    CHECK(decoded->percentile(100) == kLimit - 1);
    w.summary.count += 1;
    expect(w, SparseError::kCountMismatch);
  }
}

TEST_CASE("latency histogram: error strings") {
  std::set<std::string> seen;
  for (auto e : {SparseError::kNone, SparseError::kUnknownScheme, SparseError::kIndexOutOfRange,
                 SparseError::kIndexNotIncreasing, SparseError::kZeroCount, SparseError::kCountMismatch,
                 SparseError::kBoundsMismatch, SparseError::kOverflowMismatch, SparseError::kBadMoments}) {
    REQUIRE(vantage::agent::to_string(e) != nullptr);
    seen.insert(vantage::agent::to_string(e));
  }
  CHECK(seen.size() == 9);
}

TEST_CASE("latency histogram: a typical RTT path 20 ms with 2 ms of jitter") {
  std::mt19937_64 rng(0x5eed000e);
  std::normal_distribution<double> rtt(20e6, 2e6);
  Values values(kSamples);
  for (auto& v : values) {
    v = to_ns(rtt(rng), 1e3, 60e9);
  }
  check_against_exact(values);
  // 20 ms +- 5 sigma spans two octaves' upper and lower parts: a handful of pages, not 116.
  const LatencyHistogram h = histogram_of(values);
  CHECK(h.pages() <= 8);
}

namespace {

// A LatencySummary as an agent of scheme 1 (every release before scheme 2) sent it: 1000 RTTs
// around 20..24 ms, a tail near 35 ms, one of 150 ns and one past the range. The percentiles
// are what that agent's histogram reported for the same samples.
struct OldBatch {
  HistogramSummary summary;
  std::vector<SparseBucket> buckets;
};

OldBatch scheme1_batch() {
  OldBatch b;
  b.summary.scheme = 1;
  b.summary.count = 1000;
  b.summary.min_ns = 150;
  b.summary.max_ns = 80'000'000'000;
  b.summary.overflow = 1;
  b.summary.dropped = 0;
  b.summary.mean_ns = 0x1.857b013d0e56p+26;
  b.summary.stddev_ns = 0x1.2d581e0bacb33p+31;
  b.buckets = {{139, 1},   {1228, 50}, {1229, 61}, {1230, 64}, {1231, 68}, {1232, 63}, {1233, 64},
               {1234, 64}, {1235, 67}, {1236, 61}, {1237, 65}, {1238, 65}, {1239, 68}, {1240, 61},
               {1241, 68}, {1242, 65}, {1243, 33}, {1282, 2},  {1283, 5},  {1284, 4},  {1983, 1}};
  return b;
}

}  // namespace

TEST_CASE("latency histogram: a scheme 1 summary decodes and gives the percentiles it had") {
  const OldBatch old = scheme1_batch();
  const auto decoded = LatencyHistogram::from_sparse(old.summary, old.buckets);
  REQUIRE(decoded);
  const LatencyHistogram& h = *decoded;
  CHECK(h.scheme() == 1);
  CHECK(h.layout().bucket_count() == 1984);
  CHECK(h.count() == 1000);
  CHECK(h.overflow() == 1);
  const std::pair<double, std::uint64_t> expected[] = {
      {0.0, 150},         {1.0, 20'054'016},  {10.0, 20'316'160},  {50.0, 21'889'024},
      {90.0, 23'724'032}, {99.0, 34'865'152}, {99.9, 35'913'728}, {100.0, 80'000'000'000}};
  for (const auto& e : expected) {
    CAPTURE(e.first);  // not a structured binding: clang 14 cannot capture those
    CHECK(h.percentile(e.first) == e.second);
  }
  // Re-encoding keeps scheme 1 and the same buckets, so a store or relay passes it on intact.
  CHECK(h.summary().scheme == 1);
  CHECK(h.to_sparse() == old.buckets);
  CHECK(h.bucket_count(1228) == 50);
  CHECK(h.bucket_count(1984) == 0);

  // Scheme 1 geometry is still checked: an index valid only in scheme 2 is refused.
  OldBatch bad = old;
  bad.buckets.back().index = 1984;
  CHECK(LatencyHistogram::from_sparse(bad.summary, bad.buckets).error() ==
        to_string(SparseError::kIndexOutOfRange));
  // And min/max are placed with scheme 1's buckets (150 ns is bucket 139 there, 150 in scheme 2).
  bad = old;
  bad.summary.scheme = 2;
  CHECK_FALSE(LatencyHistogram::from_sparse(bad.summary, bad.buckets));
}

TEST_CASE("latency histogram: scheme 1 and scheme 2 histograms do not merge") {
  const OldBatch old = scheme1_batch();
  const auto decoded = LatencyHistogram::from_sparse(old.summary, old.buckets);
  REQUIRE(decoded);
  LatencyHistogram fresh;
  fresh.record(21'000'000);
  const LatencyHistogram before = fresh;

  const auto refused = fresh.merge(*decoded);
  CHECK_FALSE(refused);
  CHECK(refused.message() == "cannot merge a histogram of bucket scheme 1 into one of scheme 2");
  check_same_buckets(fresh, before);
  CHECK(fresh.mean() == before.mean());

  LatencyHistogram old_copy = *decoded;
  CHECK_FALSE(old_copy.merge(before));
  check_same_buckets(old_copy, *decoded);

  // An empty side takes the other's scheme; so does an empty one that only counted drops.
  LatencyHistogram empty;
  empty.record_signed(-1);
  REQUIRE(empty.merge(*decoded));
  CHECK(empty.scheme() == 1);
  CHECK(empty.dropped() == 1);
  CHECK(empty.percentile(50) == decoded->percentile(50));
  LatencyHistogram same_old = *decoded;
  REQUIRE(same_old.merge(*decoded));
  CHECK(same_old.count() == 2000);
  CHECK(same_old.percentile(50) == decoded->percentile(50));
  // Samples recorded into a scheme 1 histogram land in scheme 1 buckets; reset returns to
  // kScheme.
  same_old.record(20'000'000);
  CHECK(same_old.bucket_count(vantage::agent::kBucketLayout1.index(20'000'000)) == 2 * 50 + 1);
  same_old.reset();
  CHECK(same_old.scheme() == LatencyHistogram::kScheme);
}

TEST_CASE("latency histogram: memory is mapped by the page") {
  constexpr std::size_t kPageBytes = LatencyHistogram::kPageSize * sizeof(std::uint32_t);
  LatencyHistogram h;
  CHECK(h.pages() == 0);
  CHECK(h.page_capacity() == 0);
  CHECK(h.heap_bytes() == 0);
  CHECK(h.memory_bytes() == sizeof(LatencyHistogram));
  CHECK(h.percentile(50) == 0);
  CHECK(h.nonzero_buckets() == 0);

  // 64 neighbouring buckets share a page.
  const std::size_t first = LatencyHistogram::bucket_index(20'000'000) & ~(LatencyHistogram::kPageSize - 1);
  for (std::size_t i = 0; i < LatencyHistogram::kPageSize; ++i) {
    h.record(LatencyHistogram::bucket_lower(first + i));
  }
  CHECK(h.pages() == 1);
  CHECK(h.heap_bytes() == kPageBytes);
  h.record(LatencyHistogram::bucket_lower(first + LatencyHistogram::kPageSize));
  CHECK(h.pages() == 2);
  CHECK(h.heap_bytes() == 2 * kPageBytes);
  h.record(5);
  CHECK(h.pages() == 3);
  CHECK(h.page_capacity() == 3);  // the buffer grows by a quarter, at least a page
  h.record(6);
  h.record(kLimit * 3);
  CHECK(h.pages() == 4);
  CHECK(h.nonzero_buckets() == LatencyHistogram::kPageSize + 4);
  CHECK(h.percentile(0) == 5);
  CHECK(h.percentile(100) == kLimit * 3);

  // A copy holds exactly the pages in use.
  h.record(1'000'000'000);
  CHECK(h.pages() == 5);
  CHECK(h.page_capacity() == 5);
  for (std::uint64_t v = 2'000'000'000; h.pages() < 9; v += v / 64) {
    h.record(v);
  }
  CHECK(h.page_capacity() == 10);  // 8 + 8 / 4
  const LatencyHistogram copy = h;
  CHECK(copy.pages() == 9);
  CHECK(copy.heap_bytes() == 9 * kPageBytes);
  check_same_buckets(copy, h);

  // Reset keeps the buffer while an interval used more than a quarter of it...
  h.reset();
  CHECK(h.pages() == 0);
  CHECK(h.count() == 0);
  CHECK(h.nonzero_buckets() == 0);
  CHECK(h.page_capacity() == 10);
  for (int i = 0; i < 3; ++i) {
    h.record(20'000'000 + static_cast<std::uint64_t>(i) * 3'000'000);
  }
  CHECK(h.pages() == 3);
  CHECK(h.page_capacity() == 10);
  h.reset();
  CHECK(h.page_capacity() == 10);
  // ... and through up to kShrinkAfter - 1 small intervals in a row, so a wobbling path does
  // not shrink and regrow; the kShrinkAfter-th trades it for twice the pages that one used...
  for (unsigned i = 1; i < LatencyHistogram::kShrinkAfter; ++i) {
    h.record(20'000'000);
    h.reset();
    CHECK(h.page_capacity() == 10);
  }
  h.record(20'000'000);
  h.reset();
  CHECK(h.page_capacity() == 2);
  // ... and an idle stretch frees it.
  for (unsigned i = 1; i < LatencyHistogram::kShrinkAfter; ++i) {
    h.reset();
    CHECK(h.page_capacity() == 2);
  }
  h.reset();
  CHECK(h.page_capacity() == 0);
  CHECK(h.heap_bytes() == 0);
  h.reset();
  CHECK(h.page_capacity() == 0);

  // A move leaves the source empty and owning nothing.
  LatencyHistogram a;
  a.record(123'456);
  LatencyHistogram b = std::move(a);
  CHECK(b.count() == 1);
  CHECK(b.pages() == 1);
  CHECK(a.count() == 0);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  CHECK(a.heap_bytes() == 0);
  a.record(7);
  CHECK(a.percentile(50) == 7);

  // Every page of the layout mapped: the most a histogram can take.
  LatencyHistogram full;
  for (std::size_t i = 0; i < LatencyHistogram::kBucketCount; i += LatencyHistogram::kPageSize) {
    full.record(LatencyHistogram::bucket_lower(i));
  }
  CHECK(full.pages() == LatencyHistogram::kMaxPages);
  CHECK(full.page_capacity() == LatencyHistogram::kMaxPages);
  CHECK(full.heap_bytes() == LatencyHistogram::kBucketCount * sizeof(std::uint32_t));
}

TEST_CASE("latency histogram: decoding allocates only the pages its buckets need") {
  LatencyHistogram h;
  for (std::uint64_t v : {std::uint64_t{600}, std::uint64_t{610}, std::uint64_t{20'000'000}, std::uint64_t{20'100'000}}) {
    h.record(v);
  }
  REQUIRE(h.pages() == 2);
  const WireForm w = wire_of(h);
  const auto decoded = LatencyHistogram::from_sparse(w.summary, w.buckets);
  REQUIRE(decoded);
  CHECK(decoded->pages() == 2);
  CHECK(decoded->page_capacity() == 2);
  check_same_buckets(*decoded, h);
}

TEST_CASE("latency histogram: an empty histogram allocates nothing and recording allocates per page") {
  const std::size_t at_start = vantage::test::allocations();
  LatencyHistogram h;
  CHECK(h.percentile(99) == 0);
  CHECK(h.summary().count == 0);
  LatencyHistogram copy = h;
  LatencyHistogram moved = std::move(copy);
  REQUIRE(moved.merge(h));
  h.reset();
  CHECK(vantage::test::allocations() == at_start);

  // The first page is one allocation; the buffer then grows a page at a time while it holds
  // fewer than eight, and filling a mapped page allocates nothing.
  h.record(1'000'000);
  CHECK(vantage::test::allocations() == at_start + 1);
  for (std::uint64_t v = 1'000'000; v < 1'010'000; v += 100) {
    h.record(v);
  }
  CHECK(h.pages() == 1);
  CHECK(vantage::test::allocations() == at_start + 1);
  for (std::uint64_t v = 1'000'000; h.pages() < 5; v += v / 64) {
    h.record(v);
  }
  CHECK(vantage::test::allocations() == at_start + 5);

  // Interval after interval on the same pages: no allocation at all.
  const std::size_t pages = h.pages();
  Values same;
  h.for_each_nonzero([&same](SparseBucket b) { same.push_back(LatencyHistogram::bucket_lower(b.index)); });
  const std::size_t warm = vantage::test::allocations();
  for (int interval = 0; interval < 5; ++interval) {
    h.reset();
    for (std::uint64_t v : same) {
      h.record(v);
    }
    CHECK(h.pages() == pages);
  }
  CHECK(vantage::test::allocations() == warm);
}
