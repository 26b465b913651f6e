// Integer token bucket for per-source rate limiting: `rate` packets per second sustained,
// up to `burst` back to back. The caller passes the time, so tests need no sleeps.
#pragma once

#include <cstdint>

namespace vantage::agent::probes {

struct TokenBucketConfig {
  std::uint32_t rate_per_s = 100;
  std::uint32_t burst = 20;
};

// Tokens are kept in units of 1e-9 token, so that refilling is elapsed_ns * rate with no
// division and no rounding drift, and the state is two 64-bit integers (16 bytes per
// source). burst * 1e9 < 2^63 for any uint32 burst, so the level never overflows.
class TokenBucket {
 public:
  static constexpr std::uint64_t kOneToken = 1'000'000'000;

  // Starts full: a source seen for the first time gets its burst.
  void reset(const TokenBucketConfig& config, std::uint64_t now_ns) noexcept {
    level_ = capacity(config);
    last_ns_ = now_ns;
  }

  // Takes one token if there is one. now_ns must come from a monotonic clock; a value older
  // than the last one (a caller mixing clocks) refills nothing instead of wrapping around.
  [[nodiscard]] bool try_take(const TokenBucketConfig& config, std::uint64_t now_ns) noexcept {
    const std::uint64_t cap = capacity(config);
    if (now_ns > last_ns_) {
      const std::uint64_t elapsed = now_ns - last_ns_;
      // Compare before multiplying: after a long idle period elapsed * rate can overflow.
      const std::uint64_t missing = cap - level_;
      if (config.rate_per_s == 0 || elapsed < missing / config.rate_per_s + 1) {
        level_ += elapsed * config.rate_per_s;
        if (level_ > cap) {
          level_ = cap;
        }
      } else {
        level_ = cap;
      }
      last_ns_ = now_ns;
    }
    if (level_ < kOneToken) {
      return false;
    }
    level_ -= kOneToken;
    return true;
  }

  // Whole tokens available, as of the last try_take or reset.
  std::uint64_t tokens() const noexcept { return level_ / kOneToken; }

 private:
  static std::uint64_t capacity(const TokenBucketConfig& config) noexcept {
    return std::uint64_t{config.burst} * kOneToken;
  }

  std::uint64_t level_ = 0;
  std::uint64_t last_ns_ = 0;
};

}  // namespace vantage::agent::probes
