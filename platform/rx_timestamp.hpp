// Kernel receive timestamps (SO_TIMESTAMPNS): enabling them on a socket, reading the
// CLOCK_REALTIME stamp out of a received message's control data, and the one rule by which every
// prober and the reflector decide whether a stamp can be trusted.
#pragma once

#include <sys/socket.h>
#include <time.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include "platform/clock.hpp"
#include "platform/cmsg.hpp"

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
  for_each_cmsg(msg, [&stamp](const cmsghdr& c) {
    timespec ts{};
    if (read_cmsg(c, SOL_SOCKET, SCM_TIMESTAMPNS, ts)) {
      stamp = timespec_ns(ts);
    }
  });
  return stamp;
}

// A stamp is trusted only if it lies at or before a clock read taken after the datagram was
// read, and at most this much before it. Anything else means CLOCK_REALTIME stepped between
// arrival and read (settimeofday, an NTP step), and the user-space read time is used instead.
// A second is far beyond any socket queueing delay of a live prober, far below a typical step.
inline constexpr std::int64_t kMaxRxStampAgeNs = 1'000'000'000;

// Both arguments in the same clock.
constexpr bool plausible_rx_stamp(std::int64_t stamp_ns, std::int64_t read_ns) noexcept {
  const std::int64_t age = read_ns - stamp_ns;
  return age >= 0 && age <= kMaxRxStampAgeNs;
}

// When a datagram arrived, on one clock, and whether the kernel said so.
struct RxTime {
  std::int64_t ns = 0;       // the kernel's stamp, or read_ns
  std::int64_t read_ns = 0;  // the clock read after recvmsg returned
  bool kernel = false;

  // A kernel stamp before `send_ns` (same clock) can only come from a realtime step too: the
  // read time is used instead.
  void not_before(std::int64_t send_ns) noexcept {
    if (kernel && ns < send_ns) {
      ns = read_ns;
      kernel = false;
    }
  }
};

// The stamp if plausible_rx_stamp() accepts it against read_ns (same clock), else read_ns; no
// stamp (QEMU user mode, the option off): read_ns.
constexpr RxTime rx_time(std::optional<std::int64_t> stamp_ns, std::int64_t read_ns) noexcept {
  if (stamp_ns && plausible_rx_stamp(*stamp_ns, read_ns)) {
    return RxTime{*stamp_ns, read_ns, true};
  }
  return RxTime{read_ns, read_ns, false};
}

// The kernel's CLOCK_REALTIME stamp moved onto CLOCK_MONOTONIC by `realtime_offset` (see
// realtime_offset_ns()), then rx_time() against the monotonic read time.
constexpr RxTime monotonic_rx_time(std::optional<std::int64_t> kernel_realtime_ns,
                                   std::int64_t realtime_offset, std::int64_t read_mono_ns) noexcept {
  if (kernel_realtime_ns) {
    return rx_time(*kernel_realtime_ns - realtime_offset, read_mono_ns);
  }
  return rx_time(std::nullopt, read_mono_ns);
}

// As above with the clocks read now: call it right after recvmsg returned. The offset is read
// only when there is a stamp to convert, and before the read time, so that a bracket error of
// the offset cannot put a fresh stamp a few hundred nanoseconds after it.
inline RxTime monotonic_rx_time(std::optional<std::int64_t> kernel_realtime_ns) noexcept {
  if (!kernel_realtime_ns) {
    const std::int64_t read_ns = monotonic_ns();
    return RxTime{read_ns, read_ns, false};
  }
  const std::int64_t offset = realtime_offset_ns();
  return monotonic_rx_time(kernel_realtime_ns, offset, monotonic_ns());
}

}  // namespace vantage::platform
