// Log lines on stderr with sd-daemon priority prefixes ("<3>" error ... "<7>" debug), which
// journald turns into log levels; identical lines repeated in a burst are rate-limited.
#pragma once

#include <chrono>
#include <cstdarg>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace vantage::platform {

enum class LogLevel : int { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

// The program name after the prefix, e.g. "vantage-collector"; set once at start-up.
void set_log_identity(const char* name) noexcept;
// Lines above this level are not written (default kInfo).
void set_log_level(LogLevel level) noexcept;

// "debug", "info", "notice", "warning" or "error" (any case), e.g. from the config file or a
// command-line flag; nullopt for anything else so the caller can say what is accepted.
std::optional<LogLevel> parse_log_level(std::string_view name) noexcept;

// At most `burst` copies of the same line (same level and text) are written per `window`; the
// rest are counted, and once the window has passed one line reports them:
//   <4>vantage-agent: suppressed 57 repeats of: collector 10.0.0.1:7400: connection refused
// A misbehaving peer thus cannot flood the journal. burst 0 turns the limit off.
// Defaults: 10 per 10 s.
void set_log_rate_limit(unsigned burst, std::chrono::milliseconds window) noexcept;

// Writes the "suppressed N repeats" lines whose window has passed. log() does this on every
// call; call it from a periodic tick (and before exit) so a burst that was followed by silence
// is still reported.
void flush_log_suppressions() noexcept;

// A string from outside (a peer, a file) as a log line may show it: valid UTF-8 passes through,
// except that backslash becomes \\, line feed, carriage return and tab become \n, \r and \t,
// every other control character and every byte of invalid UTF-8 becomes \xNN, and the
// invisible characters that reorder or break lines (the bidi marks and controls U+061C, U+200E,
// U+200F, U+202A..U+202E, U+2066..U+2069, and U+2028, U+2029) become \u{NNNN}. At most max_bytes of the input are shown;
// a longer one ends in "..." So a peer can neither forge a log line nor make one unreadable.
std::string escape_for_log(std::string_view text, std::size_t max_bytes = 256);

// One line, written with a single write(2) so lines from different threads never interleave.
// Thread-safe.
[[gnu::format(printf, 2, 3)]] void log(LogLevel level, const char* format, ...) noexcept;

}  // namespace vantage::platform
