// The host clock's quality as the kernel states it (adjtimex): whether it is synchronised to UTC
// and how large its error may be, plus the RFC 4656 Error Estimate that carries the same facts in
// every STAMP packet and every Vantage echo reply. One-way delay is reported only from it.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

namespace vantage::platform {

// Who disciplines the clock, where the agent can tell (wire::ClockSource has the same values).
enum class ClockSource : std::uint8_t {
  kUnknown = 0,
  kChrony = 1,
  kNtpd = 2,
  kTimesyncd = 3,
  kPtp = 4,
  kPps = 5,
  kConfigured = 6,  // not read from the kernel: set by configuration (ClockStateCell::assume)
};

struct ClockState {
  bool synchronised = false;           // adjtimex: STA_UNSYNC clear and not TIME_ERROR
  std::int64_t estimated_error_ns = 0;  // adjtimex esterror
  std::int64_t maximum_error_ns = 0;    // adjtimex maxerror: the bound that is put on the wire
  ClockSource source = ClockSource::kUnknown;

  friend bool operator==(const ClockState&, const ClockState&) = default;
};

// Reads the kernel's state now (adjtimex with modes 0: reads only, needs no privilege).
ClockState read_kernel_clock_state() noexcept;

// RFC 4656 §4.1.2 Error Estimate, 16 bits: S (synchronised to UTC), Z (RFC 8186: 0 NTP, 1 PTP
// timestamp format), Scale (6 bits) and Multiplier (8 bits); the error is
// Multiplier * 2^(Scale - 32) seconds. Encoding rounds up (the bound never shrinks) and
// saturates at the largest representable error; a Multiplier of 0 is never sent (RFC 4656:
// "MUST NOT be zero"), so an error of 0 encodes as the smallest non-zero one.
struct ErrorEstimate {
  bool synchronised = false;
  bool ptp_format = false;
  std::int64_t error_ns = 0;  // decoded, rounded up to whole ns; saturates at INT64_MAX
};
std::uint16_t encode_error_estimate(const ErrorEstimate& e) noexcept;
ErrorEstimate decode_error_estimate(std::uint16_t bits) noexcept;

// What this host puts on the wire for `state`: S from synchronised, the error from maximum_error_ns
// (the kernel's bound, not its estimate: a peer gates on it).
inline ErrorEstimate error_estimate_of(const ClockState& state, bool ptp_format = false) noexcept {
  return ErrorEstimate{state.synchronised, ptp_format, state.maximum_error_ns};
}

// The process's current clock state, shared by every prober and reflector thread: refresh()
// re-reads the kernel at most once per refresh interval (a reflector may ask per packet), and an
// assumed state set from configuration (a PTP-disciplined host whose daemon does not maintain the
// kernel's flags, or a test) replaces the kernel's. Safe from any thread without locks
// (the state is packed into one 64-bit word: errors are held in whole microseconds, rounded up,
// saturating at 2^29 - 1 us, about 9 minutes; the kernel's own bound stops at 16 s).
class ClockStateCell {
 public:
  static ClockStateCell& instance() noexcept;

  // The state as of the last refresh (refreshing first when older than 1 s).
  ClockState current() noexcept;
  // Replaces the kernel's state with `state` (source kConfigured), or back to the kernel's.
  void assume(std::optional<ClockState> state) noexcept;

  // A cell of its own (tests); the process uses instance().
  ClockStateCell() = default;
  ClockStateCell(const ClockStateCell&) = delete;
  ClockStateCell& operator=(const ClockStateCell&) = delete;

 private:
  std::atomic<std::uint64_t> kernel_{0};   // packed ClockState, bit 63 set once read
  std::atomic<std::uint64_t> assumed_{0};  // packed ClockState, bit 63 set while assumed
  std::atomic<std::int64_t> next_refresh_ns_{0};  // CLOCK_MONOTONIC
};

}  // namespace vantage::platform
