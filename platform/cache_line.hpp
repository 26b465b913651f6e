// Cache line size used to keep data written by different threads on separate lines
// (false-sharing avoidance) in the lock-free queues under platform/.
#pragma once

#include <cstddef>

namespace vantage::platform {

// Deliberately a constant rather than std::hardware_destructive_interference_size:
// GCC warns (-Winterference-size) that the standard value is ABI-unstable because it
// depends on -mtune/-mcpu, and these values end up in struct layouts shared between
// translation units built with different flags. 64 bytes is the coherence granule of
// every core Vantage targets (x86_64, Cortex-A/Neoverse aarch64, ARMv7 armhf). Apple
// M-series (128-byte lines) is not a deployment target.
inline constexpr std::size_t kCacheLineSize = 64;

}  // namespace vantage::platform
