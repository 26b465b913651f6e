// Fixed-size log-linear (HDR-style) histogram of round-trip times in nanoseconds, with
// allocation-free recording, bounded-error percentiles and a validated sparse wire form.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "platform/result.hpp"

namespace vantage::agent {

// Bucket layout (scheme 1). Changing any of this changes what bucket indices mean on the
// wire, so it must come with a new kScheme.
//
//   index 0..127      one bucket per nanosecond, values 0..127 are exact
//   index 128..1983   octaves [2^e, 2^(e+1)) for e = 7..35, each cut into 64 equal
//                     sub-buckets of width 2^(e-6)
//
// Every bucket above 127 ns is at most 1/64 of its lower bound wide, so reporting its
// midpoint is off by at most 1/128 (0.78 %) of the true value. The range ends at
// 2^36 ns (68.7 s), just past the 60 s an RTT probe can plausibly wait; larger values
// are kept in the last bucket and counted by overflow(), and min/max/mean stay exact.
//
// State is 1984 uint32 counters (7936 bytes) plus eight 8-byte scalars: 8000 bytes on
// every target, no pointers and no heap, so copying one is a flat memcpy.

// One non-zero bucket of the sparse form. An in-memory record, not a byte layout (it has
// padding): serialisers write the two fields explicitly.
struct SparseBucket {
  std::uint16_t index = 0;
  std::uint32_t count = 0;

  friend bool operator==(const SparseBucket&, const SparseBucket&) = default;
};

struct HistogramSummary;

class LatencyHistogram {
 public:
  static constexpr std::uint8_t kScheme = 1;

  static constexpr unsigned kExactBits = 7;
  static constexpr std::size_t kExactBuckets = std::size_t{1} << kExactBits;  // 128
  static constexpr unsigned kSubBucketBits = 6;
  static constexpr std::size_t kSubBuckets = std::size_t{1} << kSubBucketBits;  // 64
  static constexpr unsigned kFirstOctave = kExactBits;                          // 2^7 = 128 ns
  static constexpr unsigned kLastOctave = 35;                                   // [2^35, 2^36)
  static constexpr std::size_t kOctaves = kLastOctave - kFirstOctave + 1;       // 29
  static constexpr std::size_t kBucketCount = kExactBuckets + kOctaves * kSubBuckets;
  static constexpr std::uint64_t kOverflowThreshold = std::uint64_t{1} << (kLastOctave + 1);
  static constexpr std::uint32_t kBucketLimit = UINT32_MAX;

  static_assert(kBucketCount == 1984);
  static_assert(kBucketCount <= 65536, "SparseBucket::index is 16 bits");
  // The index formula below relies on the exact region being exactly two sub-bucket
  // groups wide, which is what makes one shift-and-add cover both regions.
  static_assert(kExactBits == kSubBucketBits + 1);

  // Every uint64 has a bucket: values at or above kOverflowThreshold share the last one.
  static constexpr std::size_t bucket_index(std::uint64_t ns) noexcept {
    const std::uint64_t v = ns < kOverflowThreshold ? ns : kOverflowThreshold - 1;
    // | 1 changes nothing for the index but tells the compiler v != 0, which
    // drops the zero special case from the bit scan.
    const auto width = static_cast<unsigned>(std::bit_width(v | 1u));
    // For v < 128 the shift is 0 and the index is v itself; above that, v >> shift
    // keeps the leading 1 plus six mantissa bits (64..127) and shift * 64 moves it
    // to its octave's block.
    const unsigned shift = width > kExactBits ? width - kExactBits : 0u;
    return static_cast<std::size_t>(shift) * kSubBuckets + static_cast<std::size_t>(v >> shift);
  }

  // Bucket geometry; indices past the end are treated as the last bucket.
  static constexpr std::uint64_t bucket_lower(std::size_t idx) noexcept {
    const unsigned shift = bucket_shift(idx);
    const std::size_t mantissa = clamp_index(idx) - std::size_t{shift} * kSubBuckets;
    return static_cast<std::uint64_t>(mantissa) << shift;
  }
  // Exclusive.
  static constexpr std::uint64_t bucket_upper(std::size_t idx) noexcept {
    return bucket_lower(idx) + (std::uint64_t{1} << bucket_shift(idx));
  }
  static constexpr std::uint64_t bucket_midpoint(std::size_t idx) noexcept {
    return bucket_lower(idx) + ((std::uint64_t{1} << bucket_shift(idx)) >> 1);
  }

  void record(std::uint64_t ns) noexcept {
    std::uint32_t& bucket = buckets_[bucket_index(ns)];
    // Counters are 32-bit to keep the state at 8 KB; a long-lived or heavily merged
    // histogram must not silently wrap, and refusing the sample keeps count() equal
    // to the bucket total that percentiles and the wire form depend on.
    if (bucket == kBucketLimit) [[unlikely]] {
      ++dropped_;
      return;
    }
    ++bucket;
    const double v = to_double(ns);
    if (count_ == 0) [[unlikely]] {
      shift_ = v;
    }
    const double d = v - shift_;
    sum_ += d;
    sum_sq_ += d * d;
    ++count_;
    // Branches rather than selects: after the first few samples these are almost
    // never taken, and skipping the stores measurably shortens the hot path.
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

  // For callers that compute RTT as a signed difference of timestamps: a negative
  // result means the clock stepped backwards, so the sample carries no latency
  // information. It is dropped (counted in dropped()) rather than recorded as 0,
  // which would fake a perfect RTT and pull min and low percentiles down.
  void record_signed(std::int64_t ns) noexcept {
    if (ns < 0) [[unlikely]] {
      ++dropped_;
      return;
    }
    record(static_cast<std::uint64_t>(ns));
  }

  // Same as n calls to record(ns).
  void record_n(std::uint64_t ns, std::uint32_t n) noexcept;

  // Adds other's samples into this one; merging a histogram into itself doubles it.
  void merge(const LatencyHistogram& other) noexcept;
  void reset() noexcept { *this = LatencyHistogram{}; }

  std::uint64_t count() const noexcept { return count_; }
  // Both 0 when empty.
  std::uint64_t min() const noexcept { return count_ != 0 ? min_ : 0; }
  std::uint64_t max() const noexcept { return count_ != 0 ? max_ : 0; }
  // Samples >= kOverflowThreshold; they are included in count() and the last bucket.
  std::uint64_t overflow() const noexcept { return overflow_; }
  // Samples refused: negative input to record_signed, or a bucket already at
  // kBucketLimit. Not included in count() or any statistic.
  std::uint64_t dropped() const noexcept { return dropped_; }

  // Both 0 when empty; stddev is the population standard deviation.
  double mean() const noexcept;
  double stddev() const noexcept;

  // p in [0, 100] (clamped; NaN counts as 0). Returns the sample of rank
  // max(1, ceil(p / 100 * count())) in ascending order, approximated by its bucket's
  // midpoint clamped to [min(), max()]; ranks 1 and count() return min() and max()
  // exactly. 0 when empty.
  std::uint64_t percentile(double p) const noexcept;

  // idx < kBucketCount.
  std::uint32_t bucket_count(std::size_t idx) const noexcept { return buckets_[idx]; }
  std::span<const std::uint32_t, kBucketCount> buckets() const noexcept { return buckets_; }
  std::size_t nonzero_buckets() const noexcept;

  // Visits non-zero buckets in index order without allocating.
  template <class F>
  void for_each_nonzero(F&& fn) const {
    for (std::size_t i = 0; i < kBucketCount; ++i) {
      if (buckets_[i] != 0) {
        fn(SparseBucket{static_cast<std::uint16_t>(i), buckets_[i]});
      }
    }
  }

  std::vector<SparseBucket> to_sparse() const;
  HistogramSummary summary() const noexcept;

  // Rebuilds a histogram from untrusted wire data; every inconsistency between the
  // summary and the buckets is rejected. The result reproduces buckets, count,
  // min, max, overflow, dropped, mean and stddev, so percentiles and merges behave as
  // on the sender. An error's message is to_string() of its SparseError (code kInvalid).
  static platform::Result<LatencyHistogram> from_sparse(const HistogramSummary& summary,
                                                      std::span<const SparseBucket> buckets);

 private:
  // 32-bit ARM has no 64-bit integer to double instruction and would call into
  // libgcc on every record. Two exact 32-bit conversions and one rounding add give
  // the same correctly rounded result inline.
  static double to_double(std::uint64_t v) noexcept {
    if constexpr (sizeof(std::uintptr_t) < sizeof(std::uint64_t)) {
      return static_cast<double>(static_cast<std::uint32_t>(v >> 32)) * 4294967296.0 +
             static_cast<double>(static_cast<std::uint32_t>(v));
    } else {
      return static_cast<double>(v);
    }
  }

  static constexpr std::size_t clamp_index(std::size_t idx) noexcept {
    return idx < kBucketCount ? idx : kBucketCount - 1;
  }
  static constexpr unsigned bucket_shift(std::size_t idx) noexcept {
    const auto group = static_cast<unsigned>(clamp_index(idx) / kSubBuckets);
    return group > 1 ? group - 1 : 0u;
  }

  // Mean and variance come from sums of deviations from shift_ rather than of raw
  // values: with RTTs around 10^10 ns and jitter of a few ns, sum(v^2)/n - mean^2
  // would cancel away every significant digit, whereas deviations from a value
  // inside the data stay small. shift_ is the first sample, and merge re-centres it
  // on the combined mean. Recording needs no division.
  std::uint64_t count_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
  std::uint64_t overflow_ = 0;
  std::uint64_t dropped_ = 0;
  double shift_ = 0.0;
  double sum_ = 0.0;     // sum of (v - shift_)
  double sum_sq_ = 0.0;  // sum of (v - shift_)^2
  std::array<std::uint32_t, kBucketCount> buckets_{};
};

static_assert(sizeof(LatencyHistogram) == LatencyHistogram::kBucketCount * sizeof(std::uint32_t) + 8 * 8);
static_assert(sizeof(LatencyHistogram) == 8000);
static_assert(std::is_trivially_copyable_v<LatencyHistogram>);

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
