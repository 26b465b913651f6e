// The kernel's clock state (adjtimex), the RFC 4656 Error Estimate and the process-wide cell.
#include "platform/clock_state.hpp"

#include <sys/timex.h>
#include <unistd.h>

#include <limits>

#include "platform/clock.hpp"

namespace vantage::platform {
namespace {

constexpr std::int64_t kNsPerUs = 1'000;
constexpr std::uint64_t kNsPerS = 1'000'000'000;
constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kRefreshNs = 1'000'000'000;

bool exists(const char* path) noexcept { return ::access(path, F_OK) == 0; }

// Which daemon disciplines the clock, from the files each leaves under /run while it runs: a few
// access() calls, made once per refresh. ptp4l answers on its UDS (default /var/run/ptp4l);
// phc2sys then steers the system clock from the PHC. A host running chrony with a PHC refclock
// has no ptp4l socket and is reported as chrony.
ClockSource detect_source() noexcept {
  if (exists("/var/run/ptp4l") || exists("/run/ptp4l") || exists("/run/phc2sys.pid")) return ClockSource::kPtp;
  if (exists("/run/chrony/chronyd.pid") || exists("/run/chronyd.pid") || exists("/var/run/chronyd.pid"))
    return ClockSource::kChrony;
  if (exists("/run/ntpd.pid") || exists("/var/run/ntpd.pid") || exists("/run/ntp.pid")) return ClockSource::kNtpd;
  // systemd-timesyncd (systemd >= 239) keeps this file while it has synchronised the clock.
  if (exists("/run/systemd/timesync/synchronized")) return ClockSource::kTimesyncd;
  return ClockSource::kUnknown;
}

std::int64_t us_to_ns(long us) noexcept {
  if (us <= 0) return 0;
  const auto v = static_cast<std::int64_t>(us);
  return v > kInt64Max / kNsPerUs ? kInt64Max : v * kNsPerUs;
}

// Packed cell word: bit 63 valid, 62 synchronised, 59..61 source, 30..58 maximum error and
// 0..29 estimated error, both in us rounded up and saturated.
constexpr std::uint64_t kValid = std::uint64_t{1} << 63;
constexpr std::uint64_t kSync = std::uint64_t{1} << 62;
constexpr int kSourceShift = 59;  // 3 bits: 59..61
constexpr int kMaxShift = 30;     // 29 bits: 30..58
constexpr std::uint64_t kErrMask30 = (std::uint64_t{1} << 30) - 1;
constexpr std::uint64_t kErrMask29 = (std::uint64_t{1} << 29) - 1;

std::uint64_t ns_to_us_up(std::int64_t ns, std::uint64_t mask) noexcept {
  if (ns <= 0) return 0;
  const std::uint64_t us = (static_cast<std::uint64_t>(ns) + kNsPerUs - 1) / kNsPerUs;
  return us > mask ? mask : us;
}

std::uint64_t pack(const ClockState& s) noexcept {
  return kValid | (s.synchronised ? kSync : 0) |
         ((static_cast<std::uint64_t>(s.source) & 7) << kSourceShift) |
         (ns_to_us_up(s.maximum_error_ns, kErrMask29) << kMaxShift) | ns_to_us_up(s.estimated_error_ns, kErrMask30);
}

ClockState unpack(std::uint64_t w) noexcept {
  ClockState s;
  s.synchronised = (w & kSync) != 0;
  s.source = static_cast<ClockSource>((w >> kSourceShift) & 7);
  s.maximum_error_ns = static_cast<std::int64_t>((w >> kMaxShift) & kErrMask29) * kNsPerUs;
  s.estimated_error_ns = static_cast<std::int64_t>(w & kErrMask30) * kNsPerUs;
  return s;
}

}  // namespace

ClockState read_kernel_clock_state() noexcept {
  ClockState s;
  timex tx{};
  tx.modes = 0;
  const int rc = ::adjtimex(&tx);
  if (rc < 0) return s;  // unknown: reported as unsynchronised
  s.synchronised = (tx.status & STA_UNSYNC) == 0 && rc != TIME_ERROR;
  s.estimated_error_ns = us_to_ns(tx.esterror);
  s.maximum_error_ns = us_to_ns(tx.maxerror);
  s.source = (tx.status & STA_PPSTIME) != 0 ? ClockSource::kPps : detect_source();
  return s;
}

std::uint16_t encode_error_estimate(const ErrorEstimate& e) noexcept {
  const std::uint64_t err = e.error_ns > 0 ? static_cast<std::uint64_t>(e.error_ns) : 0;
  unsigned scale = 63;
  std::uint64_t multiplier = 255;  // saturated unless a finer scale fits below
  // The finest scale whose multiplier (rounded up) fits 8 bits: the smallest bound >= err.
  for (unsigned s = 0; s <= 63; ++s) {
    std::uint64_t m = 0;
    if (s <= 32) {
      // Multiplier = ceil(err * 2^(32 - s) / 1e9); skip scales where it is surely > 255 before
      // multiplying (keeps the product within 64 bits).
      const unsigned k = 32 - s;
      if (err > (255 * kNsPerS >> k) + 1) continue;
      m = ((err << k) + kNsPerS - 1) / kNsPerS;
    } else {
      const std::uint64_t unit = kNsPerS << (s - 32);  // <= 1e9 * 2^31: fits
      m = (err + unit - 1) / unit;
    }
    if (m <= 255) {
      scale = s;
      multiplier = m;
      break;
    }
  }
  if (multiplier == 0) multiplier = 1;  // RFC 4656: the Multiplier MUST NOT be zero
  return static_cast<std::uint16_t>((e.synchronised ? 0x8000u : 0u) | (e.ptp_format ? 0x4000u : 0u) |
                                    ((scale & 0x3fu) << 8) | static_cast<unsigned>(multiplier));
}

ErrorEstimate decode_error_estimate(std::uint16_t bits) noexcept {
  ErrorEstimate e;
  e.synchronised = (bits & 0x8000u) != 0;
  e.ptp_format = (bits & 0x4000u) != 0;
  const unsigned scale = (bits >> 8) & 0x3fu;
  const std::uint64_t m = bits & 0xffu;
  if (scale <= 32) {
    const unsigned k = 32 - scale;
    const std::uint64_t num = m * kNsPerS;  // <= 2.55e11
    e.error_ns = static_cast<std::int64_t>((num + (std::uint64_t{1} << k) - 1) >> k);
  } else {
    const unsigned k = scale - 32;
    const std::uint64_t num = m * kNsPerS;
    e.error_ns = num > (static_cast<std::uint64_t>(kInt64Max) >> k) ? kInt64Max : static_cast<std::int64_t>(num << k);
  }
  return e;
}

ClockStateCell& ClockStateCell::instance() noexcept {
  static ClockStateCell cell;
  return cell;
}

ClockState ClockStateCell::current() noexcept {
  const std::uint64_t assumed = assumed_.load(std::memory_order_acquire);
  if ((assumed & kValid) != 0) return unpack(assumed);
  const std::int64_t now = monotonic_ns();
  std::int64_t due = next_refresh_ns_.load(std::memory_order_relaxed);
  // One thread per second wins the refresh; the others answer from the word as it stands.
  if (now >= due && next_refresh_ns_.compare_exchange_strong(due, now + kRefreshNs, std::memory_order_relaxed)) {
    const ClockState s = read_kernel_clock_state();
    kernel_.store(pack(s), std::memory_order_release);
    return unpack(pack(s));
  }
  const std::uint64_t w = kernel_.load(std::memory_order_acquire);
  // Before the first refresh has stored its word (a race at start-up): read the kernel directly.
  if ((w & kValid) == 0) return unpack(pack(read_kernel_clock_state()));
  return unpack(w);
}

void ClockStateCell::assume(std::optional<ClockState> state) noexcept {
  if (!state) {
    assumed_.store(0, std::memory_order_release);
    return;
  }
  ClockState s = *state;
  s.source = ClockSource::kConfigured;
  assumed_.store(pack(s), std::memory_order_release);
}

}  // namespace vantage::platform
