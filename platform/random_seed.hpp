// Seeds for the non-cryptographic generators (send jitter, hash keys, instance ids): one source
// for every component, so none of them falls back differently.
#pragma once

#include <sys/random.h>
#include <unistd.h>

#include <cstdint>

#include "platform/clock.hpp"

namespace vantage::platform {

// 64 bits from the kernel's entropy pool without blocking; never 0, so it can seed generators
// whose all-zero state is degenerate and stand for "set" where 0 means "pick one". Before the
// pool is ready (early boot) time and pid still separate processes started together.
inline std::uint64_t random_seed() noexcept {
  std::uint64_t v = 0;
  if (::getrandom(&v, sizeof(v), GRND_NONBLOCK) == static_cast<ssize_t>(sizeof(v)) && v != 0) {
    return v;
  }
  v = static_cast<std::uint64_t>(realtime_ns()) ^ (static_cast<std::uint64_t>(monotonic_ns()) << 17) ^
      (static_cast<std::uint64_t>(::getpid()) << 32);
  return v != 0 ? v : 1;
}

}  // namespace vantage::platform
