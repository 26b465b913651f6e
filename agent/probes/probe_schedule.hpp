// The pseudo-random jitter the probers spread their sends with, so agents started together do
// not probe in lockstep.
#pragma once

#include <algorithm>
#include <cstdint>

namespace vantage::agent::probes {

// splitmix64: a full-period 64-bit generator; jitter only needs to decorrelate agents, not to
// resist prediction.
inline std::uint64_t next_random(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
inline double uniform01(std::uint64_t& state) noexcept {
  return static_cast<double>(next_random(state) >> 11) * 0x1.0p-53;
}

// interval_ns scaled by a factor uniform in [1 - jitter, 1 + jitter), never below 1 ns.
inline std::int64_t jittered_interval(std::int64_t interval_ns, double jitter,
                                      std::uint64_t& state) noexcept {
  const double factor = 1.0 + jitter * (2.0 * uniform01(state) - 1.0);
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(interval_ns) * factor));
}

}  // namespace vantage::agent::probes
