#include "platform/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace vantage::platform {

namespace {
std::atomic<const char*> identity{"vantage"};
std::atomic<int> max_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace

void set_log_identity(const char* name) noexcept { identity.store(name, std::memory_order_relaxed); }

void set_log_level(LogLevel level) noexcept {
  max_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

void log(LogLevel level, const char* format, ...) noexcept {
  if (static_cast<int>(level) > max_level.load(std::memory_order_relaxed)) {
    return;
  }
  char line[1024];
  int n = std::snprintf(line, sizeof line, "<%d>%s: ", static_cast<int>(level),
                        identity.load(std::memory_order_relaxed));
  if (n < 0) {
    return;
  }
  std::va_list args;
  va_start(args, format);
  const int m = std::vsnprintf(line + n, sizeof line - static_cast<std::size_t>(n), format, args);
  va_end(args);
  std::size_t length = static_cast<std::size_t>(n) + (m < 0 ? 0 : static_cast<std::size_t>(m));
  // Long lines are cut, never split: one record per line for journald.
  if (length > sizeof line - 2) {
    length = sizeof line - 2;
  }
  line[length++] = '\n';
  (void)!::write(STDERR_FILENO, line, length);
}

}  // namespace vantage::platform
