// Log lines on stderr with sd-daemon priority prefixes ("<3>" error ... "<7>" debug), which
// journald turns into log levels; plain text on a terminal otherwise.
#pragma once

#include <cstdarg>

namespace vantage::platform {

enum class LogLevel : int { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

// The program name after the prefix, e.g. "vantage-collector"; set once at start-up.
void set_log_identity(const char* name) noexcept;
// Lines above this level are not written (default kInfo).
void set_log_level(LogLevel level) noexcept;

// One line, written with a single write(2) so lines from different threads never interleave.
[[gnu::format(printf, 2, 3)]] void log(LogLevel level, const char* format, ...) noexcept;

}  // namespace vantage::platform
