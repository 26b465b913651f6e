// Non-hot-path parts of LatencyHistogram: statistics, percentiles, merging and the
// sparse wire form.
#include "agent/aggregate/latency_histogram.hpp"

#include <algorithm>
#include <cmath>

#include "platform/enum_names.hpp"

namespace vantage::agent {

namespace {

// ceil(p * count / 100) rather than ceil(p / 100 * count): for integral p the product
// is exact and the single rounding of the division cannot push an exact integer rank
// up by one.
std::uint64_t rank_for(double p, std::uint64_t count) noexcept {
  const double r = std::ceil(p * static_cast<double>(count) / 100.0);
  if (!(r > 1.0)) {
    return 1;
  }
  if (r >= static_cast<double>(count)) {
    return count;
  }
  return static_cast<std::uint64_t>(r);
}

platform::Status reject(SparseError error) { return platform::Status::error(to_string(error)); }

}  // namespace

void LatencyHistogram::record_n(std::uint64_t ns, std::uint32_t n) noexcept {
  std::uint32_t& bucket = buckets_[bucket_index(ns)];
  const std::uint32_t room = kBucketLimit - bucket;
  const std::uint32_t accepted = n < room ? n : room;
  dropped_ += n - accepted;
  if (accepted == 0) {
    return;
  }
  bucket += accepted;
  const double v = static_cast<double>(ns);
  if (count_ == 0) {
    shift_ = v;
  }
  const double d = v - shift_;
  const double w = static_cast<double>(accepted);
  sum_ += w * d;
  sum_sq_ += w * d * d;
  count_ += accepted;
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
  if (ns >= kOverflowThreshold) {
    overflow_ += accepted;
  }
}

void LatencyHistogram::merge(const LatencyHistogram& other) noexcept {
  // other may be *this, so everything read from it is read before the first write.
  const std::uint64_t other_count = other.count_;
  const std::uint64_t other_dropped = other.dropped_;
  if (other_count == 0) {
    dropped_ += other_dropped;
    return;
  }
  if (count_ == 0) {
    const std::uint64_t dropped = dropped_ + other_dropped;
    *this = other;
    dropped_ = dropped;
    return;
  }

  // Pairwise combination of centred second moments (Chan, Golub, LeVeque). Each side's
  // M2 is taken in its own frame, where it is accurate, instead of shifting one raw
  // sum of squares into the other's frame, which cancels badly when the shifts differ.
  const double na = static_cast<double>(count_);
  const double nb = static_cast<double>(other_count);
  const double mean_a = sum_ / na;
  const double mean_b_own = other.sum_ / nb;
  const double mean_b = (other.shift_ - shift_) + mean_b_own;
  const double m2_a = std::max(0.0, sum_sq_ - sum_ * mean_a);
  const double m2_b = std::max(0.0, other.sum_sq_ - other.sum_ * mean_b_own);
  const double weight_b = nb / (na + nb);
  const double delta = mean_b - mean_a;
  const double new_shift = shift_ + (mean_a + delta * weight_b);
  const double m2 = m2_a + m2_b + delta * delta * na * weight_b;
  const std::uint64_t other_min = other.min_;
  const std::uint64_t other_max = other.max_;
  const std::uint64_t other_overflow = other.overflow_;

  count_ += other_count;
  min_ = std::min(min_, other_min);
  max_ = std::max(max_, other_max);
  overflow_ += other_overflow;
  dropped_ += other_dropped;
  shift_ = new_shift;
  sum_ = 0.0;
  sum_sq_ = m2;

  // A branch-free scan for saturation keeps the common case to plain vector adds.
  std::uint32_t saturates = 0;
  for (std::size_t i = 0; i < kBucketCount; ++i) {
    saturates |= static_cast<std::uint32_t>(buckets_[i] > kBucketLimit - other.buckets_[i]);
  }
  if (saturates == 0) [[likely]] {
    // Staging through a local block proves to the compiler that source and
    // destination do not overlap (other may be *this), so -O2 vectorises the add
    // without runtime alias checks.
    static_assert(kBucketCount % kSubBuckets == 0);
    for (std::size_t base = 0; base < kBucketCount; base += kSubBuckets) {
      std::array<std::uint32_t, kSubBuckets> block;
      std::copy_n(other.buckets_.begin() + static_cast<std::ptrdiff_t>(base), kSubBuckets, block.begin());
      for (std::size_t j = 0; j < kSubBuckets; ++j) {
        buckets_[base + j] += block[j];
      }
    }
    return;
  }
  for (std::size_t i = 0; i < kBucketCount; ++i) {
    const std::uint64_t total = std::uint64_t{buckets_[i]} + other.buckets_[i];
    if (total <= kBucketLimit) [[likely]] {
      buckets_[i] = static_cast<std::uint32_t>(total);
      continue;
    }
    // Which samples of the bucket get dropped is unknown, so the moments lose them
    // at the bucket's representative value; the error is bounded by the bucket
    // width, or by [min, max] for the open-ended last bucket.
    buckets_[i] = kBucketLimit;
    const std::uint64_t excess = total - kBucketLimit;
    const double e = static_cast<double>(excess);
    const double d = static_cast<double>(std::clamp(bucket_midpoint(i), min_, max_)) - shift_;
    count_ -= excess;
    dropped_ += excess;
    sum_ -= e * d;
    sum_sq_ -= e * d * d;
  }
  // Overflow samples all live in the last bucket; if it saturated, keep the
  // invariant overflow <= last bucket that the wire form checks.
  overflow_ = std::min<std::uint64_t>(overflow_, buckets_[kBucketCount - 1]);
}

double LatencyHistogram::mean() const noexcept {
  if (count_ == 0) {
    return 0.0;
  }
  const double m = shift_ + sum_ / static_cast<double>(count_);
  // Rounding can put the mean an ulp outside the data; the wire check relies on it
  // staying inside [min, max].
  return std::clamp(m, static_cast<double>(min_), static_cast<double>(max_));
}

double LatencyHistogram::stddev() const noexcept {
  if (count_ < 2) {
    return 0.0;
  }
  const double n = static_cast<double>(count_);
  const double m = sum_ / n;
  const double var = sum_sq_ / n - m * m;
  if (!(var > 0.0)) {
    return 0.0;
  }
  // Population stddev never exceeds half the range (Popoviciu); clamping removes
  // rounding excess so receivers can check the bound.
  return std::min(std::sqrt(var), static_cast<double>(max_ - min_) * 0.5);
}

std::uint64_t LatencyHistogram::percentile(double p) const noexcept {
  if (count_ == 0) {
    return 0;
  }
  if (!(p > 0.0)) {
    p = 0.0;
  }
  if (p > 100.0) {
    p = 100.0;
  }
  const std::uint64_t rank = rank_for(p, count_);
  if (rank == 1) {
    return min_;
  }
  if (rank == count_) {
    return max_;
  }
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < kBucketCount; ++i) {
    cumulative += buckets_[i];
    if (cumulative >= rank) {
      return std::clamp(bucket_midpoint(i), min_, max_);
    }
  }
  return max_;  // unreachable while count_ equals the bucket total
}

std::size_t LatencyHistogram::nonzero_buckets() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(buckets_.begin(), buckets_.end(), [](std::uint32_t c) { return c != 0; }));
}

std::vector<SparseBucket> LatencyHistogram::to_sparse() const {
  std::vector<SparseBucket> out;
  out.reserve(nonzero_buckets());
  for_each_nonzero([&out](SparseBucket b) { out.push_back(b); });
  return out;
}

HistogramSummary LatencyHistogram::summary() const noexcept {
  HistogramSummary s;
  s.scheme = kScheme;
  s.count = count_;
  s.min_ns = min();
  s.max_ns = max();
  s.overflow = overflow_;
  s.dropped = dropped_;
  s.mean_ns = mean();
  s.stddev_ns = stddev();
  return s;
}

platform::Result<LatencyHistogram> LatencyHistogram::from_sparse(const HistogramSummary& summary,
                                                                 std::span<const SparseBucket> buckets) {
  if (summary.scheme != kScheme) {
    return reject(SparseError::kUnknownScheme);
  }

  LatencyHistogram h;
  // Strictly increasing indices below kBucketCount bound the list to kBucketCount
  // entries of < 2^32 each, so the total cannot overflow 64 bits.
  std::uint64_t total = 0;
  std::size_t next_allowed = 0;
  for (const SparseBucket& b : buckets) {
    if (b.index >= kBucketCount) {
      return reject(SparseError::kIndexOutOfRange);
    }
    if (b.index < next_allowed) {
      return reject(SparseError::kIndexNotIncreasing);
    }
    if (b.count == 0) {
      return reject(SparseError::kZeroCount);
    }
    h.buckets_[b.index] = b.count;
    total += b.count;
    next_allowed = std::size_t{b.index} + 1;
  }
  if (total != summary.count) {
    return reject(SparseError::kCountMismatch);
  }

  if (total == 0) {
    if (summary.min_ns != 0 || summary.max_ns != 0) {
      return reject(SparseError::kBoundsMismatch);
    }
    if (summary.overflow != 0) {
      return reject(SparseError::kOverflowMismatch);
    }
    if (summary.mean_ns != 0.0 || summary.stddev_ns != 0.0) {
      return reject(SparseError::kBadMoments);
    }
    h.dropped_ = summary.dropped;
    return h;
  }

  if (summary.min_ns > summary.max_ns || bucket_index(summary.min_ns) != buckets.front().index ||
      bucket_index(summary.max_ns) != buckets.back().index ||
      (total == 1 && summary.min_ns != summary.max_ns)) {
    return reject(SparseError::kBoundsMismatch);
  }

  const bool max_overflows = summary.max_ns >= kOverflowThreshold;
  const bool min_overflows = summary.min_ns >= kOverflowThreshold;
  if (summary.overflow > h.buckets_[kBucketCount - 1] || max_overflows != (summary.overflow != 0) ||
      (min_overflows && summary.overflow != total)) {
    return reject(SparseError::kOverflowMismatch);
  }

  const double lo = static_cast<double>(summary.min_ns);
  const double hi = static_cast<double>(summary.max_ns);
  // The stddev bound is twice the true maximum so that a sender's rounding never
  // trips it; it still rejects values that would poison merged statistics.
  if (!std::isfinite(summary.mean_ns) || !std::isfinite(summary.stddev_ns) || summary.mean_ns < lo ||
      summary.mean_ns > hi || summary.stddev_ns < 0.0 ||
      summary.stddev_ns > static_cast<double>(summary.max_ns - summary.min_ns)) {
    return reject(SparseError::kBadMoments);
  }

  h.count_ = total;
  h.min_ = summary.min_ns;
  h.max_ = summary.max_ns;
  h.overflow_ = summary.overflow;
  h.dropped_ = summary.dropped;
  // Centred on the mean, so the deviation sum is zero and the squared sum is n * var.
  h.shift_ = summary.mean_ns;
  h.sum_ = 0.0;
  h.sum_sq_ = summary.stddev_ns * summary.stddev_ns * static_cast<double>(total);
  return h;
}

const char* to_string(SparseError error) noexcept {
  static constexpr const char* kNames[] = {"none",
                                           "unknown bucket scheme",
                                           "bucket index out of range",
                                           "bucket indices not strictly increasing",
                                           "bucket with zero count",
                                           "count differs from bucket total",
                                           "min/max inconsistent with buckets",
                                           "overflow count inconsistent with buckets",
                                           "mean/stddev invalid"};
  static_assert(platform::enum_table_covers<SparseError, SparseError::kBadMoments>(kNames));
  return platform::enum_name(error, kNames, "unknown error");
}

}  // namespace vantage::agent
