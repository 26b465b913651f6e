#include "platform/sd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "platform/clock.hpp"
#include "platform/enum_names.hpp"

namespace vantage::platform {

namespace {

struct NotifyAddress {
  sockaddr_un address{};
  socklen_t length = 0;
};

// NOTIFY_SOCKET is either a filesystem path or, with a leading '@', a name in Linux's abstract
// socket namespace. Abstract names are spelled with a NUL first byte and are exactly `length`
// bytes long (no terminator, embedded bytes count), which is why '@' becomes '\0' and the
// address length stops at the last character. Returns false for anything else (e.g. systemd's
// "vsock:" form, which a PoP server never hands us) or a name that does not fit sun_path.
bool parse_notify_address(const char* value, NotifyAddress& out) noexcept {
  const std::size_t length = std::strlen(value);
  out.address.sun_family = AF_UNIX;
  if (value[0] == '/') {
    if (length >= sizeof out.address.sun_path) {  // room for the terminating NUL
      return false;
    }
    std::memcpy(out.address.sun_path, value, length + 1);
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length + 1);
    return true;
  }
  if (value[0] == '@') {
    if (length < 2 || length > sizeof out.address.sun_path) {
      return false;
    }
    out.address.sun_path[0] = '\0';
    std::memcpy(out.address.sun_path + 1, value + 1, length - 1);
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);
    return true;
  }
  return false;
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  [[nodiscard]] int get() const noexcept { return fd_; }

 private:
  int fd_;
};

}  // namespace

const char* NotifyResult::describe() const noexcept {
  static constexpr const char* kNames[] = {"sent", "not under systemd (NOTIFY_SOCKET unset)",
                                           "NOTIFY_SOCKET is not an absolute path or @abstract name",
                                           "notify socket error"};
  static_assert(enum_table_covers<NotifyOutcome, NotifyOutcome::kSocketError>(kNames));
  return enum_name(outcome, kNames);
}

NotifyResult sd_notify(std::string_view state) noexcept {
  // getenv on every call rather than a cached address: cheap at a few calls a minute, and a
  // test (or a re-exec) sees the current environment. Safe from any thread as long as nobody
  // calls setenv concurrently, which the daemons never do after start-up.
  const char* value = std::getenv("NOTIFY_SOCKET");
  if (value == nullptr || value[0] == '\0') {
    return {NotifyOutcome::kNotUnderSystemd, 0};
  }
  NotifyAddress target;
  if (!parse_notify_address(value, target)) {
    return {NotifyOutcome::kBadAddress, 0};
  }
  // A socket per call keeps this free of shared state, so any thread may notify without a lock;
  // CLOEXEC so a spawned child cannot inherit it and speak for us.
  const FileDescriptor socket_fd{::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
  if (socket_fd.get() < 0) {
    return {NotifyOutcome::kSocketError, errno};
  }
  // MSG_NOSIGNAL: a notification must never be able to kill the daemon. Should the other end be
  // shut down, the kernel would raise SIGPIPE (default action: terminate) before returning EPIPE.
  // The send blocks like libsystemd's does; PID 1 drains the socket, and a PID 1 that stopped
  // doing so would stop honouring keep-alives anyway.
  ssize_t sent = 0;
  do {
    sent = ::sendto(socket_fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                    reinterpret_cast<const sockaddr*>(&target.address), target.length);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    return {NotifyOutcome::kSocketError, errno};
  }
  return {NotifyOutcome::kSent, 0};
}

NotifyResult sd_notify_ready() noexcept { return sd_notify("READY=1"); }

NotifyResult sd_notify_status(std::string_view text) noexcept {
  // A fixed buffer (no allocation in a noexcept path); systemctl status shows one short line.
  char line[256] = "STATUS=";
  std::size_t length = std::strlen(line);
  for (const char c : text) {
    if (length == sizeof line) {
      break;
    }
    // A newline would end the assignment and let the rest of the text (which may quote a peer)
    // pass as another one, e.g. "READY=1" or "MAINPID=".
    line[length++] = (c == '\n' || c == '\r') ? ' ' : c;
  }
  return sd_notify(std::string_view(line, length));
}

NotifyResult sd_notify_watchdog() noexcept { return sd_notify("WATCHDOG=1"); }

NotifyResult sd_notify_reloading() noexcept {
  // systemd (253+, Type=notify-reload) pairs RELOADING=1 with the CLOCK_MONOTONIC time of the
  // request so it can tell this reload's READY=1 from an older one; earlier versions ignore it.
  char line[64];
  const int n = std::snprintf(line, sizeof line, "RELOADING=1\nMONOTONIC_USEC=%llu",
                              static_cast<unsigned long long>(monotonic_ns() / 1000));
  if (n < 0 || static_cast<std::size_t>(n) >= sizeof line) {
    return sd_notify("RELOADING=1");
  }
  return sd_notify(std::string_view(line, static_cast<std::size_t>(n)));
}

NotifyResult sd_notify_stopping() noexcept { return sd_notify("STOPPING=1"); }

std::optional<std::chrono::microseconds> watchdog_interval() noexcept {
  const char* usec = std::getenv("WATCHDOG_USEC");
  if (usec == nullptr || usec[0] == '\0') {
    return std::nullopt;
  }
  std::uint64_t value = 0;
  const char* usec_end = usec + std::strlen(usec);
  const auto parsed = std::from_chars(usec, usec_end, value);
  if (parsed.ec != std::errc{} || parsed.ptr != usec_end || value == 0 ||
      value > static_cast<std::uint64_t>(std::chrono::microseconds::max().count())) {
    return std::nullopt;
  }
  // The environment is inherited: a child we spawned (or a process that exec'd us) must not
  // think systemd watches it. systemd names the watched PID; no name means the main process.
  if (const char* pid = std::getenv("WATCHDOG_PID"); pid != nullptr && pid[0] != '\0') {
    long long watched = 0;
    const char* pid_end = pid + std::strlen(pid);
    const auto pid_parsed = std::from_chars(pid, pid_end, watched);
    if (pid_parsed.ec != std::errc{} || pid_parsed.ptr != pid_end || watched != ::getpid()) {
      return std::nullopt;
    }
  }
  return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(value));
}

Watchdog::Watchdog(std::chrono::microseconds interval) noexcept : interval_(interval) {}

bool Watchdog::kick_if_healthy(bool healthy, Clock::time_point now) noexcept {
  if (!healthy || interval_ <= std::chrono::microseconds::zero()) {
    return false;
  }
  if (last_kick_ && now - *last_kick_ < interval_ / 2) {
    return false;
  }
  if (!sd_notify_watchdog().sent()) {
    return false;  // retried on the next tick rather than waiting out another half interval
  }
  last_kick_ = now;
  return true;
}

}  // namespace vantage::platform
