// Service-manager notifications (sd_notify(3)) spoken directly over NOTIFY_SOCKET, without
// libsystemd, plus the watchdog keep-alive that the main loop sends while the pipeline is healthy.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace vantage::platform {

enum class NotifyOutcome : int {
  kSent,             // one datagram went to the service manager
  kNotUnderSystemd,  // NOTIFY_SOCKET is unset or empty: nothing to tell, not an error
  kBadAddress,       // NOTIFY_SOCKET is not an absolute path or '@' abstract name, or too long
  kSocketError,      // socket(2) or sendto(2) failed; see error
};

struct NotifyResult {
  NotifyOutcome outcome = NotifyOutcome::kNotUnderSystemd;
  int error = 0;  // errno for kSocketError, otherwise 0

  [[nodiscard]] bool sent() const noexcept { return outcome == NotifyOutcome::kSent; }
  // A short English reason ("sent", "not under systemd", ...), for a log line.
  [[nodiscard]] const char* describe() const noexcept;
};

// Sends `state` (newline-separated VAR=value assignments) as one datagram. Any thread may call;
// each call opens, uses and closes its own socket. Never throws.
NotifyResult sd_notify(std::string_view state) noexcept;

NotifyResult sd_notify_ready() noexcept;                        // READY=1
NotifyResult sd_notify_status(std::string_view text) noexcept;  // STATUS=<text> (one line)
NotifyResult sd_notify_watchdog() noexcept;                     // WATCHDOG=1
NotifyResult sd_notify_stopping() noexcept;                     // STOPPING=1

// RELOADING=1 + MONOTONIC_USEC, on SIGHUP before re-reading the config. systemd shows the unit
// as reloading until the next READY=1, so send sd_notify_ready() once the reload is done,
// whether or not the new config was accepted.
NotifyResult sd_notify_reloading() noexcept;

// The service's watchdog timeout from WATCHDOG_USEC, when systemd enabled one for this process
// (WATCHDOG_PID, when set, must be getpid()). nullopt when unset, zero, malformed or not ours.
std::optional<std::chrono::microseconds> watchdog_interval() noexcept;

// Sends WATCHDOG=1 at most once per half interval, and only while the caller vouches that the
// process is making progress: a wedged pipeline then stops the keep-alives and systemd restarts
// the service, where a timer thread kicking unconditionally would hide the hang. One thread only.
class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Watchdog(std::chrono::microseconds interval) noexcept;

  // How often to call kick_if_healthy(). Keep-alives go out every half timeout; ticking at a
  // quarter keeps the worst gap (half + quarter) inside the timeout even when a tick runs late.
  [[nodiscard]] std::chrono::microseconds kick_period() const noexcept { return interval_ / 4; }

  // True when a WATCHDOG=1 datagram was sent by this call.
  bool kick_if_healthy(bool healthy, Clock::time_point now = Clock::now()) noexcept;

 private:
  std::chrono::microseconds interval_;
  std::optional<Clock::time_point> last_kick_;
};

}  // namespace vantage::platform
