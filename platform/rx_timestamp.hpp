// Kernel receive timestamps (SO_TIMESTAMPNS): enabling them on a socket and reading the
// CLOCK_REALTIME stamp out of a received message's control data.
#pragma once

#include <sys/socket.h>
#include <time.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include "platform/clock.hpp"

namespace vantage::platform {

// False when the socket refuses the option (QEMU user mode does); callers then read a clock
// after recvmsg returns instead.
inline bool enable_kernel_rx_timestamps(int fd) noexcept {
  const int one = 1;
  return ::setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) == 0;
}

// The SCM_TIMESTAMPNS stamp of a message received with SO_TIMESTAMPNS on, in CLOCK_REALTIME
// nanoseconds; the last one wins should the control data carry several. Empty when absent.
inline std::optional<std::int64_t> kernel_rx_realtime_ns(const msghdr& msg) noexcept {
  std::optional<std::int64_t> stamp;
  // glibc's CMSG_NXTHDR takes a non-const msghdr but only reads it.
  msghdr* m = const_cast<msghdr*>(&msg);
  for (cmsghdr* c = CMSG_FIRSTHDR(m); c != nullptr; c = CMSG_NXTHDR(m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
        c->cmsg_len >= CMSG_LEN(sizeof(timespec))) {
      // CMSG_DATA is not guaranteed to be aligned for timespec.
      timespec ts{};
      std::memcpy(&ts, CMSG_DATA(c), sizeof(ts));
      stamp = timespec_ns(ts);
    }
  }
  return stamp;
}

}  // namespace vantage::platform
