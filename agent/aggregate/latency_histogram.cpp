// Non-hot-path parts of LatencyHistogram: page management, statistics, percentiles, merging
// and the sparse wire form.
#include "agent/aggregate/latency_histogram.hpp"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>

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

LatencyHistogram::LatencyHistogram(const LatencyHistogram& other)
    : count_(other.count_),
      min_(other.min_),
      max_(other.max_),
      overflow_(other.overflow_),
      dropped_(other.dropped_),
      shift_(other.shift_),
      sum_(other.sum_),
      sum_sq_(other.sum_sq_),
      page_slot_(other.page_slot_),
      pages_used_(other.pages_used_),
      pages_capacity_(other.pages_used_),
      scheme_(other.scheme_) {
  if (pages_used_ != 0) {
    pool_ = new std::uint32_t[std::size_t{pages_used_} * kPageSize];
    std::copy_n(other.pool_, std::size_t{pages_used_} * kPageSize, pool_);
  }
}

LatencyHistogram& LatencyHistogram::operator=(const LatencyHistogram& other) {
  if (!try_assign(other)) {
    throw std::bad_alloc();
  }
  return *this;
}

bool LatencyHistogram::try_assign(const LatencyHistogram& other) noexcept {
  if (this == &other) {
    return true;
  }
  if (pages_capacity_ < other.pages_used_) {
    // Allocate before touching anything, so a failure leaves *this as it was.
    auto* bigger = new (std::nothrow) std::uint32_t[std::size_t{other.pages_used_} * kPageSize];
    if (bigger == nullptr) {
      return false;
    }
    delete[] pool_;
    pool_ = bigger;
    pages_capacity_ = other.pages_used_;
  }
  std::copy_n(other.pool_, std::size_t{other.pages_used_} * kPageSize, pool_);
  count_ = other.count_;
  min_ = other.min_;
  max_ = other.max_;
  overflow_ = other.overflow_;
  dropped_ = other.dropped_;
  shift_ = other.shift_;
  sum_ = other.sum_;
  sum_sq_ = other.sum_sq_;
  page_slot_ = other.page_slot_;
  pages_used_ = other.pages_used_;
  scheme_ = other.scheme_;
  return true;
}

LatencyHistogram& LatencyHistogram::operator=(LatencyHistogram&& other) noexcept {
  if (this != &other) {
    LatencyHistogram taken(std::move(other));
    swap(taken);
  }
  return *this;
}

void LatencyHistogram::swap(LatencyHistogram& other) noexcept {
  using std::swap;
  swap(count_, other.count_);
  swap(min_, other.min_);
  swap(max_, other.max_);
  swap(overflow_, other.overflow_);
  swap(dropped_, other.dropped_);
  swap(shift_, other.shift_);
  swap(sum_, other.sum_);
  swap(sum_sq_, other.sum_sq_);
  swap(pool_, other.pool_);
  swap(page_slot_, other.page_slot_);
  swap(pages_used_, other.pages_used_);
  swap(pages_capacity_, other.pages_capacity_);
  swap(scheme_, other.scheme_);
  swap(small_intervals_, other.small_intervals_);
}

bool LatencyHistogram::reallocate(std::size_t capacity) noexcept {
  auto* fresh = new (std::nothrow) std::uint32_t[capacity * kPageSize];
  if (fresh == nullptr) {
    return false;
  }
  std::copy_n(pool_, std::size_t{pages_used_} * kPageSize, fresh);
  delete[] pool_;
  pool_ = fresh;
  pages_capacity_ = static_cast<std::uint8_t>(capacity);
  return true;
}

std::uint32_t* LatencyHistogram::add_page(std::size_t idx) noexcept {
  if (pages_used_ == pages_capacity_) {
    // Growing by a quarter bounds the unused part of the buffer to a quarter, which is what a
    // target's memory is judged by; the dozen or so copies it takes to reach a few dozen pages
    // happen once, since reset() keeps the buffer.
    const std::size_t grown =
        std::min(kMaxPages, std::size_t{pages_capacity_} + std::max<std::size_t>(1, pages_capacity_ / 4));
    if (!reallocate(grown)) {
      return nullptr;
    }
  }
  std::uint32_t* page = pool_ + (std::size_t{pages_used_} << kPageBits);
  std::fill_n(page, kPageSize, 0u);
  ++pages_used_;
  page_slot_[idx >> kPageBits] = pages_used_;
  return page + (idx & (kPageSize - 1));
}

void LatencyHistogram::clear_samples() noexcept {
  count_ = 0;
  min_ = UINT64_MAX;
  max_ = 0;
  overflow_ = 0;
  dropped_ = 0;
  shift_ = 0.0;
  sum_ = 0.0;
  sum_sq_ = 0.0;
  page_slot_.fill(0);
}

void LatencyHistogram::reset() noexcept {
  const std::size_t used = pages_used_;
  clear_samples();
  pages_used_ = 0;
  set_scheme(kLayout);
  // Unmapping every page (rather than zeroing the mapped ones) also lets go of pages a path
  // no longer touches; mapping one again is a table write and a 256-byte clear, no malloc.
  // The buffer is kept, so a steady path reuses it every interval. Only after kShrinkAfter
  // intervals in a row that used a quarter of it or less is it traded for one of twice the
  // pages the last one used (or freed, if that used none): a path whose page count wobbles
  // never shrinks and regrows, and a target gone quiet gives its memory back.
  if (pages_capacity_ == 0) {
    return;
  }
  if (used * 4 > pages_capacity_) {
    small_intervals_ = 0;
    return;
  }
  if (++small_intervals_ < kShrinkAfter) {
    return;
  }
  small_intervals_ = 0;
  delete[] pool_;
  pool_ = nullptr;
  pages_capacity_ = 0;
  if (used != 0) {
    static_cast<void>(reallocate(used * 2));  // on failure add_page grows it again
  }
}

void LatencyHistogram::record_n(std::uint64_t ns, std::uint32_t n) noexcept {
  if (n == 0) {
    return;
  }
  const std::size_t idx = index_of(ns);
  std::uint32_t* bucket = counter(idx);
  if (bucket == nullptr) {
    bucket = add_page(idx);
    if (bucket == nullptr) {
      dropped_ += n;
      return;
    }
  }
  const std::uint32_t room = kBucketLimit - *bucket;
  const std::uint32_t accepted = n < room ? n : room;
  dropped_ += n - accepted;
  if (accepted == 0) {
    return;
  }
  *bucket += accepted;
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

platform::Status LatencyHistogram::merge(const LatencyHistogram& other) {
  // other may be *this, so everything read from it is read before the first write.
  const std::uint64_t other_count = other.count_;
  const std::uint64_t other_dropped = other.dropped_;
  if (other_count == 0) {
    dropped_ += other_dropped;
    return {};
  }
  if (count_ == 0) {
    const std::uint64_t dropped = dropped_ + other_dropped;
    if (!try_assign(other)) {
      return platform::Status::error("no memory for histogram pages", platform::Errc::kExhausted);
    }
    dropped_ = dropped;
    return {};
  }
  if (scheme_ != other.scheme_) {
    return platform::Status::error("cannot merge a histogram of bucket scheme " + std::to_string(other.scheme_) +
                                   " into one of scheme " + std::to_string(scheme_));
  }

  // Every page this lacks is reserved first, so running out of memory changes nothing.
  const std::size_t page_count = layout().bucket_count() / kPageSize;
  std::size_t missing = 0;
  for (std::size_t p = 0; p < page_count; ++p) {
    missing += static_cast<std::size_t>(other.page_slot_[p] != 0 && page_slot_[p] == 0);
  }
  if (std::size_t{pages_used_} + missing > pages_capacity_ && !reallocate(std::size_t{pages_used_} + missing)) {
    return platform::Status::error("no memory for histogram pages", platform::Errc::kExhausted);
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

  // Samples a saturated bucket cannot keep: which ones is unknown, so the moments lose them at
  // the bucket's representative value; the error is bounded by the bucket width, or by
  // [min, max] for the open-ended last bucket.
  const BucketLayout& geometry = layout();
  auto lose = [&](std::size_t idx, std::uint64_t excess) {
    const double e = static_cast<double>(excess);
    const double d = static_cast<double>(std::clamp(geometry.midpoint(idx), min_, max_)) - shift_;
    count_ -= excess;
    dropped_ += excess;
    sum_ -= e * d;
    sum_sq_ -= e * d * d;
  };

  for (std::size_t p = 0; p < page_count; ++p) {
    const std::uint32_t* src = other.page_at(p);
    if (src == nullptr) {
      continue;
    }
    // Staged through a local block: proves to the compiler that source and destination do
    // not overlap (other may be *this), so the add vectorises without alias checks.
    std::array<std::uint32_t, kPageSize> block;
    std::copy_n(src, kPageSize, block.begin());
    std::uint32_t* dst = page_at(p);
    if (dst == nullptr) {
      dst = add_page(p << kPageBits);  // cannot fail: reserved above
    }
    // A branch-free scan for saturation keeps the common case to plain vector adds.
    std::uint32_t saturates = 0;
    for (std::size_t j = 0; j < kPageSize; ++j) {
      saturates |= static_cast<std::uint32_t>(dst[j] > kBucketLimit - block[j]);
    }
    if (saturates == 0) [[likely]] {
      for (std::size_t j = 0; j < kPageSize; ++j) {
        dst[j] += block[j];
      }
      continue;
    }
    for (std::size_t j = 0; j < kPageSize; ++j) {
      const std::uint64_t total = std::uint64_t{dst[j]} + block[j];
      if (total <= kBucketLimit) [[likely]] {
        dst[j] = static_cast<std::uint32_t>(total);
        continue;
      }
      dst[j] = kBucketLimit;
      lose((p << kPageBits) + j, total - kBucketLimit);
    }
  }
  // Overflow samples all live in the last bucket; if it saturated, keep the
  // invariant overflow <= last bucket that the wire form checks.
  overflow_ = std::min<std::uint64_t>(overflow_, bucket_count(geometry.bucket_count() - 1));
  return {};
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
  const BucketLayout& geometry = layout();
  const std::size_t page_count = geometry.bucket_count() / kPageSize;
  std::uint64_t cumulative = 0;
  for (std::size_t pg = 0; pg < page_count; ++pg) {
    const std::uint32_t* page = page_at(pg);
    if (page == nullptr) {
      continue;
    }
    for (std::size_t j = 0; j < kPageSize; ++j) {
      cumulative += page[j];
      if (cumulative >= rank) {
        return std::clamp(geometry.midpoint((pg << kPageBits) + j), min_, max_);
      }
    }
  }
  return max_;  // unreachable while count_ equals the bucket total
}

std::size_t LatencyHistogram::nonzero_buckets() const noexcept {
  std::size_t n = 0;
  for (std::size_t p = 0; p < kMaxPages; ++p) {
    if (const std::uint32_t* page = page_at(p)) {
      n += static_cast<std::size_t>(std::count_if(page, page + kPageSize, [](std::uint32_t c) { return c != 0; }));
    }
  }
  return n;
}

std::vector<SparseBucket> LatencyHistogram::to_sparse() const {
  std::vector<SparseBucket> out;
  out.reserve(nonzero_buckets());
  for_each_nonzero([&out](SparseBucket b) { out.push_back(b); });
  return out;
}

HistogramSummary LatencyHistogram::summary() const noexcept {
  HistogramSummary s;
  s.scheme = scheme_;
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
  const BucketLayout* geometry = bucket_layout(summary.scheme);
  if (geometry == nullptr) {
    return reject(SparseError::kUnknownScheme);
  }
  const std::size_t bucket_limit = geometry->bucket_count();

  // Strictly increasing indices below the bucket count bound the list to that many entries of
  // < 2^32 each, so the total cannot overflow 64 bits. Validation comes first so that a
  // hostile list costs no memory.
  std::uint64_t total = 0;
  std::size_t next_allowed = 0;
  std::size_t pages_needed = 0;
  for (const SparseBucket& b : buckets) {
    if (b.index >= bucket_limit) {
      return reject(SparseError::kIndexOutOfRange);
    }
    if (b.index < next_allowed) {
      return reject(SparseError::kIndexNotIncreasing);
    }
    if (b.count == 0) {
      return reject(SparseError::kZeroCount);
    }
    if (next_allowed == 0 || (std::size_t{b.index} >> kPageBits) != ((next_allowed - 1) >> kPageBits)) {
      ++pages_needed;
    }
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
    LatencyHistogram h;
    h.set_scheme(*geometry);
    h.dropped_ = summary.dropped;
    return h;
  }

  if (summary.min_ns > summary.max_ns || geometry->index(summary.min_ns) != buckets.front().index ||
      geometry->index(summary.max_ns) != buckets.back().index ||
      (total == 1 && summary.min_ns != summary.max_ns)) {
    return reject(SparseError::kBoundsMismatch);
  }

  const bool max_overflows = summary.max_ns >= kOverflowThreshold;
  const bool min_overflows = summary.min_ns >= kOverflowThreshold;
  const std::uint64_t last_bucket = buckets.back().index == bucket_limit - 1 ? buckets.back().count : 0;
  if (summary.overflow > last_bucket || max_overflows != (summary.overflow != 0) ||
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

  LatencyHistogram h;
  h.set_scheme(*geometry);
  if (!h.reallocate(pages_needed)) {
    return platform::Status::error("no memory for histogram pages", platform::Errc::kExhausted);
  }
  for (const SparseBucket& b : buckets) {
    std::uint32_t* c = h.counter(b.index);
    *(c != nullptr ? c : h.add_page(b.index)) = b.count;
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
