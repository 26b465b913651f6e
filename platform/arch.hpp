// The architecture this binary was built for, named as Debian names it (amd64, arm64, armhf):
// telemetry carries it so operators can tell an ARM board's numbers from an x86 server's.
#pragma once

#include <string_view>

namespace vantage::platform {

#if defined(__x86_64__)
inline constexpr std::string_view kArchName = "amd64";
#elif defined(__aarch64__)
inline constexpr std::string_view kArchName = "arm64";
#elif defined(__arm__) && defined(__ARM_PCS_VFP)
inline constexpr std::string_view kArchName = "armhf";
#else
#error "unsupported target architecture: add it to platform/arch.hpp"
#endif

}  // namespace vantage::platform
