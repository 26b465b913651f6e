// Log-linear (HDR-style) histogram of round-trip times in nanoseconds: counters live in
// pages allocated on first use, recording never allocates once its page exists, percentiles
// have a bounded relative error, and the sparse wire form is validated on decode.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "platform/result.hpp"

namespace vantage::agent {

// Bucket layouts. A layout is named on the wire by its scheme number (histogram_scheme), so
// changing what an index means always comes with a new scheme; old ones stay decodable.
//
// With b sub-bucket bits:
//   index 0 .. 2^(b+1)-1   one bucket per nanosecond: these values are exact
//   then                   octaves [2^e, 2^(e+1)) for e = b+1 .. 35, each cut into 2^b equal
//                          sub-buckets of width 2^(e-b)
//
// A bucket above the exact region is at most 2^-b of its lower bound wide, so reporting its
// midpoint is off by at most 2^-(b+1) of the true value:
//   scheme 1  b = 6: 128 exact, 29 octaves of 64,  1984 buckets, error <= 1/128 (0.78 %)
//   scheme 2  b = 8: 512 exact, 27 octaves of 256, 7424 buckets, error <= 1/512 (0.195 %)
// Both end at 2^36 ns (68.7 s), just past the 60 s an RTT probe can plausibly wait; larger
// values are kept in the last bucket and counted by overflow(), and min/max/mean stay exact.
inline constexpr std::uint64_t kHistogramOverflowThreshold = std::uint64_t{1} << 36;

struct BucketLayout {
  std::uint8_t scheme = 0;
  unsigned sub_bucket_bits = 0;

  constexpr std::size_t sub_buckets() const noexcept { return std::size_t{1} << sub_bucket_bits; }
  constexpr std::size_t exact_buckets() const noexcept { return std::size_t{2} << sub_bucket_bits; }
  constexpr std::size_t bucket_count() const noexcept {
    const unsigned octaves = 36 - (sub_bucket_bits + 1);
    return exact_buckets() + std::size_t{octaves} * sub_buckets();
  }
  // Half a bucket over its lower bound: the worst relative error of a reported midpoint.
  constexpr double max_relative_error() const noexcept {
    return 1.0 / static_cast<double>(std::uint64_t{2} << sub_bucket_bits);
  }

  // Every uint64 has a bucket: values at or above the threshold share the last one.
  constexpr std::size_t index(std::uint64_t ns) const noexcept {
    const std::uint64_t v = ns < kHistogramOverflowThreshold ? ns : kHistogramOverflowThreshold - 1;
    // | 1 changes nothing for the index but tells the compiler v != 0, which drops the zero
    // special case from the bit scan.
    const auto width = static_cast<unsigned>(std::bit_width(v | 1u));
    // In the exact region the shift is 0 and the index is v itself; above it, v >> shift keeps
    // the leading 1 plus b mantissa bits (2^b .. 2^(b+1)-1) and shift << b moves that to its
    // octave's block, right after the exact region for the first octave.
    const unsigned exact_bits = sub_bucket_bits + 1;
    const unsigned shift = width > exact_bits ? width - exact_bits : 0u;
    return (static_cast<std::size_t>(shift) << sub_bucket_bits) + static_cast<std::size_t>(v >> shift);
  }
  // Bucket geometry; indices past the end are treated as the last bucket.
  constexpr std::uint64_t lower(std::size_t idx) const noexcept {
    const unsigned shift = shift_of(idx);
    const std::size_t mantissa = clamp(idx) - (static_cast<std::size_t>(shift) << sub_bucket_bits);
    return static_cast<std::uint64_t>(mantissa) << shift;
  }
  // Exclusive.
  constexpr std::uint64_t upper(std::size_t idx) const noexcept {
    return lower(idx) + (std::uint64_t{1} << shift_of(idx));
  }
  constexpr std::uint64_t midpoint(std::size_t idx) const noexcept {
    return lower(idx) + ((std::uint64_t{1} << shift_of(idx)) >> 1);
  }

 private:
  constexpr std::size_t clamp(std::size_t idx) const noexcept {
    return idx < bucket_count() ? idx : bucket_count() - 1;
  }
  constexpr unsigned shift_of(std::size_t idx) const noexcept {
    const auto group = static_cast<unsigned>(clamp(idx) >> sub_bucket_bits);
    return group > 1 ? group - 1 : 0u;
  }
};

inline constexpr BucketLayout kBucketLayout1{1, 6};
inline constexpr BucketLayout kBucketLayout2{2, 8};
static_assert(kBucketLayout1.bucket_count() == 1984);
static_assert(kBucketLayout2.bucket_count() == 7424);
static_assert(kBucketLayout2.bucket_count() <= 65536, "SparseBucket::index is 16 bits");

// nullptr for a scheme this build does not know (0 means "no histogram" on the wire).
constexpr const BucketLayout* bucket_layout(std::uint8_t scheme) noexcept {
  return scheme == 1 ? &kBucketLayout1 : scheme == 2 ? &kBucketLayout2 : nullptr;
}

// One non-zero bucket of the sparse form. An in-memory record, not a byte layout (it has
// padding): serialisers write the two fields explicitly.
struct SparseBucket {
  std::uint16_t index = 0;
  std::uint32_t count = 0;

  friend bool operator==(const SparseBucket&, const SparseBucket&) = default;
};

struct HistogramSummary;

// Memory: a fixed part (scalars, a one-byte-per-page table) of 192 bytes, plus 256 bytes per
// page of 64 counters in use, in one pool buffer that grows by a quarter (so about a quarter
// of it at most is spare). An empty histogram owns no heap memory. reset() unmaps every page
// but keeps the buffer, so an interval that touches no more pages than the buffer holds
// allocates nothing. After kShrinkAfter intervals in a row that used a quarter of the buffer
// or less, reset() shrinks it to twice what the last one used, or frees it when that used none.
class LatencyHistogram {
 public:
  // What new histograms record with; from_sparse also rebuilds scheme 1.
  static constexpr std::uint8_t kScheme = 2;
  static constexpr BucketLayout kLayout = kBucketLayout2;

  static constexpr unsigned kSubBucketBits = kLayout.sub_bucket_bits;
  static constexpr std::size_t kSubBuckets = kLayout.sub_buckets();      // 256
  static constexpr std::size_t kExactBuckets = kLayout.exact_buckets();  // 512
  static constexpr std::size_t kBucketCount = kLayout.bucket_count();    // 7424
  static constexpr std::uint64_t kOverflowThreshold = kHistogramOverflowThreshold;
  static constexpr std::uint32_t kBucketLimit = UINT32_MAX;

  static constexpr unsigned kPageBits = 6;
  static constexpr std::size_t kPageSize = std::size_t{1} << kPageBits;  // counters, 256 bytes
  static constexpr std::size_t kMaxPages = kBucketCount / kPageSize;     // 116
  static_assert(kBucketCount % kPageSize == 0 && kBucketLayout1.bucket_count() % kPageSize == 0);
  static_assert(kMaxPages < 256, "page slots are bytes");
  static constexpr unsigned kShrinkAfter = 8;

  // Geometry of kScheme; a histogram's own is layout().
  static constexpr std::size_t bucket_index(std::uint64_t ns) noexcept { return kLayout.index(ns); }
  static constexpr std::uint64_t bucket_lower(std::size_t idx) noexcept { return kLayout.lower(idx); }
  static constexpr std::uint64_t bucket_upper(std::size_t idx) noexcept { return kLayout.upper(idx); }
  static constexpr std::uint64_t bucket_midpoint(std::size_t idx) noexcept { return kLayout.midpoint(idx); }

  LatencyHistogram() noexcept = default;
  // Copies allocate exactly the pages in use (and throw std::bad_alloc if that fails).
  LatencyHistogram(const LatencyHistogram& other);
  LatencyHistogram& operator=(const LatencyHistogram& other);
  // As copy-assignment, but an allocation failure returns false and leaves *this unchanged:
  // for noexcept paths.
  [[nodiscard]] bool try_assign(const LatencyHistogram& other) noexcept;
  // The moved-from histogram is empty and owns nothing.
  LatencyHistogram(LatencyHistogram&& other) noexcept { swap(other); }
  LatencyHistogram& operator=(LatencyHistogram&& other) noexcept;
  ~LatencyHistogram() { delete[] pool_; }
  void swap(LatencyHistogram& other) noexcept;

  void record(std::uint64_t ns) noexcept {
    const std::size_t idx = index_of(ns);
    const unsigned slot = page_slot_[idx >> kPageBits];
    std::uint32_t* bucket;
    if (slot != 0) [[likely]] {
      bucket = pool_ + ((std::size_t{slot} - 1) << kPageBits) + (idx & (kPageSize - 1));
    } else {
      bucket = add_page(idx);
      if (bucket == nullptr) {  // out of memory: refused like a full bucket
        ++dropped_;
        return;
      }
    }
    // Counters are 32-bit to keep pages small; a long-lived or heavily merged histogram must
    // not silently wrap, and refusing the sample keeps count() equal to the bucket total that
    // percentiles and the wire form depend on.
    if (*bucket == kBucketLimit) [[unlikely]] {
      ++dropped_;
      return;
    }
    ++*bucket;
    const double v = to_double(ns);
    if (count_ == 0) [[unlikely]] {
      shift_ = v;
    }
    const double d = v - shift_;
    sum_ += d;
    sum_sq_ += d * d;
    ++count_;
    // Branches rather than selects: after the first few samples these are almost never
    // taken, and skipping the stores measurably shortens the hot path.
    if (ns < min_) [[unlikely]] {
      min_ = ns;
    }
    if (ns > max_) [[unlikely]] {
      max_ = ns;
    }
    if (ns >= kOverflowThreshold) [[unlikely]] {
      ++overflow_;
    }
  }

  // For callers that compute RTT as a signed difference of timestamps: a negative result
  // means the clock stepped backwards, so the sample carries no latency information. It is
  // dropped (counted in dropped()) rather than recorded as 0, which would fake a perfect RTT
  // and pull min and low percentiles down.
  void record_signed(std::int64_t ns) noexcept {
    if (ns < 0) [[unlikely]] {
      ++dropped_;
      return;
    }
    record(static_cast<std::uint64_t>(ns));
  }

  // Same as n calls to record(ns).
  void record_n(std::uint64_t ns, std::uint32_t n) noexcept;

  // Adds other's samples into this one; merging a histogram into itself doubles it. An empty
  // side takes the other's scheme; two non-empty histograms of different schemes are refused
  // (error, nothing changed): their buckets do not line up, and re-bucketing would silently
  // claim a precision the coarser one never had. Samples whose page cannot be allocated are
  // counted in dropped().
  platform::Status merge(const LatencyHistogram& other);
  // Back to empty, in kScheme; keeps the page buffer for the next interval (see above). Meant
  // to be called once per interval: the shrink rule counts calls.
  void reset() noexcept;

  std::uint8_t scheme() const noexcept { return scheme_; }
  const BucketLayout& layout() const noexcept { return scheme_ == 1 ? kBucketLayout1 : kBucketLayout2; }

  std::uint64_t count() const noexcept { return count_; }
  // Both 0 when empty.
  std::uint64_t min() const noexcept { return count_ != 0 ? min_ : 0; }
  std::uint64_t max() const noexcept { return count_ != 0 ? max_ : 0; }
  // Samples >= kOverflowThreshold; they are included in count() and the last bucket.
  std::uint64_t overflow() const noexcept { return overflow_; }
  // Samples refused: negative input to record_signed, a bucket already at kBucketLimit, or no
  // memory for a new page. Not included in count() or any statistic.
  std::uint64_t dropped() const noexcept { return dropped_; }

  // Both 0 when empty; stddev is the population standard deviation.
  double mean() const noexcept;
  double stddev() const noexcept;

  // p in [0, 100] (clamped; NaN counts as 0). Returns the sample of rank
  // max(1, ceil(p / 100 * count())) in ascending order, approximated by its bucket's midpoint
  // clamped to [min(), max()]; ranks 1 and count() return min() and max() exactly. 0 when
  // empty.
  std::uint64_t percentile(double p) const noexcept;

  // 0 for an index with no page or past layout().bucket_count().
  std::uint32_t bucket_count(std::size_t idx) const noexcept {
    if (idx >= layout().bucket_count()) {
      return 0;
    }
    const std::uint32_t* c = counter(idx);
    return c != nullptr ? *c : 0;
  }
  std::size_t nonzero_buckets() const noexcept;

  // Pages mapped now, pages the buffer holds, and what the whole histogram occupies.
  std::size_t pages() const noexcept { return pages_used_; }
  std::size_t page_capacity() const noexcept { return pages_capacity_; }
  std::size_t heap_bytes() const noexcept { return std::size_t{pages_capacity_} * kPageSize * sizeof(std::uint32_t); }
  std::size_t memory_bytes() const noexcept { return sizeof(LatencyHistogram) + heap_bytes(); }

  // Visits non-zero buckets in index order without allocating.
  template <class F>
  void for_each_nonzero(F&& fn) const {
    const std::size_t page_count = layout().bucket_count() / kPageSize;
    for (std::size_t p = 0; p < page_count; ++p) {
      const std::uint32_t* page = page_at(p);
      if (page == nullptr) {
        continue;
      }
      for (std::size_t j = 0; j < kPageSize; ++j) {
        if (page[j] != 0) {
          fn(SparseBucket{static_cast<std::uint16_t>((p << kPageBits) + j), page[j]});
        }
      }
    }
  }

  std::vector<SparseBucket> to_sparse() const;
  HistogramSummary summary() const noexcept;

  // Rebuilds a histogram of scheme 1 or 2 from untrusted wire data; every inconsistency
  // between the summary and the buckets is rejected. The result reproduces buckets, count,
  // min, max, overflow, dropped, mean and stddev, so percentiles and merges behave as on the
  // sender. An error's message is to_string() of its SparseError (code kInvalid), or Errc
  // kExhausted when its pages cannot be allocated.
  static platform::Result<LatencyHistogram> from_sparse(const HistogramSummary& summary,
                                                      std::span<const SparseBucket> buckets);

 private:
  // 32-bit ARM has no 64-bit integer to double instruction and would call into libgcc on
  // every record. Two exact 32-bit conversions and one rounding add give the same correctly
  // rounded result inline.
  static double to_double(std::uint64_t v) noexcept {
    if constexpr (sizeof(std::uintptr_t) < sizeof(std::uint64_t)) {
      return static_cast<double>(static_cast<std::uint32_t>(v >> 32)) * 4294967296.0 +
             static_cast<double>(static_cast<std::uint32_t>(v));
    } else {
      return static_cast<double>(v);
    }
  }

  // Both layouts with constant shifts, chosen by a branch that is always predicted: cheaper
  // than one index computation with variable shifts.
  std::size_t index_of(std::uint64_t ns) const noexcept {
    return scheme_ == kScheme ? kLayout.index(ns) : kBucketLayout1.index(ns);
  }
  std::uint32_t* page_at(std::size_t page) const noexcept {
    const unsigned slot = page_slot_[page];
    return slot != 0 ? pool_ + ((std::size_t{slot} - 1) << kPageBits) : nullptr;
  }
  std::uint32_t* counter(std::size_t idx) const noexcept {
    std::uint32_t* page = page_at(idx >> kPageBits);
    return page != nullptr ? page + (idx & (kPageSize - 1)) : nullptr;
  }
  // Maps a zeroed page for idx (growing the buffer if needed) and returns idx's counter;
  // nullptr when memory runs out.
  std::uint32_t* add_page(std::size_t idx) noexcept;
  bool reallocate(std::size_t capacity) noexcept;
  void set_scheme(const BucketLayout& layout) noexcept { scheme_ = layout.scheme; }
  void clear_samples() noexcept;

  // Mean and variance come from sums of deviations from shift_ rather than of raw values:
  // with RTTs around 10^10 ns and jitter of a few ns, sum(v^2)/n - mean^2 would cancel away
  // every significant digit, whereas deviations from a value inside the data stay small.
  // shift_ is the first sample, and merge re-centres it on the combined mean. Recording needs
  // no division.
  std::uint64_t count_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
  std::uint64_t overflow_ = 0;
  std::uint64_t dropped_ = 0;
  double shift_ = 0.0;
  double sum_ = 0.0;     // sum of (v - shift_)
  double sum_sq_ = 0.0;  // sum of (v - shift_)^2
  // pages_capacity_ pages of kPageSize counters; the first pages_used_ are mapped.
  std::uint32_t* pool_ = nullptr;
  // Per page of the layout: 0 when absent, else 1 + its slot in pool_.
  std::array<std::uint8_t, kMaxPages> page_slot_{};
  std::uint8_t pages_used_ = 0;
  std::uint8_t pages_capacity_ = 0;
  std::uint8_t scheme_ = kScheme;
  std::uint8_t small_intervals_ = 0;  // consecutive resets that found the buffer under a quarter used
};

static_assert(sizeof(LatencyHistogram) <= 192);

// Everything except the buckets that a receiver needs to rebuild the histogram.
struct HistogramSummary {
  std::uint8_t scheme = LatencyHistogram::kScheme;
  std::uint64_t count = 0;
  std::uint64_t min_ns = 0;
  std::uint64_t max_ns = 0;
  std::uint64_t overflow = 0;
  std::uint64_t dropped = 0;
  double mean_ns = 0.0;
  double stddev_ns = 0.0;
};

enum class SparseError : std::uint8_t {
  kNone,
  kUnknownScheme,
  kIndexOutOfRange,
  kIndexNotIncreasing,
  kZeroCount,
  kCountMismatch,     // summary count differs from the bucket total
  kBoundsMismatch,    // min/max do not fall in the first/last non-empty bucket
  kOverflowMismatch,  // overflow count impossible given max and the last bucket
  kBadMoments,        // mean/stddev non-finite, negative or outside [min, max]
};

const char* to_string(SparseError error) noexcept;

}  // namespace vantage::agent
