#include "platform/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "platform/clock.hpp"
#include "platform/utf8_text.hpp"

namespace vantage::platform {

namespace {

std::atomic<const char*> identity{"vantage"};
std::atomic<int> max_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<unsigned> rate_burst{10};
std::atomic<std::int64_t> rate_window_ns{10'000'000'000};

constexpr std::size_t kLineSize = 1024;

// Rate-limit state: a fixed table, so a peer that makes every line unique (its address, a
// counter) costs a slot eviction and never memory. 4-way buckets keep two messages whose hashes
// share a bucket from evicting each other on every line, which would defeat the limit.
constexpr std::size_t kWays = 4;
constexpr std::size_t kBuckets = 16;
constexpr std::size_t kKeptText = 200;  // enough of the message to recognise it in the summary

struct RepeatSlot {
  bool used = false;
  std::uint64_t hash = 0;
  std::int64_t window_start_ns = 0;
  std::uint32_t count = 0;       // lines seen in the current window, written or not
  std::uint32_t suppressed = 0;  // lines not written in the current window
  std::size_t text_length = 0;
  char text[kKeptText];
};

std::mutex table_mutex;
std::array<RepeatSlot, kBuckets * kWays> table;  // guarded by table_mutex

std::uint64_t hash_line(int level, std::string_view text) noexcept {
  // FNV-1a: a few lines of code and plenty for telling log lines apart.
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  auto mix = [&hash](unsigned char byte) {
    hash ^= byte;
    hash *= 0x100000001b3ULL;
  };
  mix(static_cast<unsigned char>(level));
  for (const char c : text) {
    mix(static_cast<unsigned char>(c));
  }
  return hash;
}

void write_line(char* line, std::size_t length) noexcept {
  // Long lines are cut, never split: one record per line for journald.
  if (length >= kLineSize - 1) {  // at the bound: vsnprintf may have cut it already
    length = kLineSize - 1;
    // Nor is a character cut: a sequence that the cut leaves incomplete goes whole.
    std::size_t lead = length;
    while (lead > 0 && length - lead < 3 && (static_cast<unsigned char>(line[lead - 1]) & 0xc0) == 0x80) --lead;
    if (lead > 0) {
      const auto first = static_cast<unsigned char>(line[lead - 1]);
      const std::size_t need = first >= 0xf0 ? 4 : first >= 0xe0 ? 3 : first >= 0xc0 ? 2 : 1;
      if (length - (lead - 1) < need) length = lead - 1;
    }
  }
  line[length++] = '\n';
  (void)!::write(STDERR_FILENO, line, length);
}

// Formats "<level>identity: " into line; returns its length (0 on failure).
std::size_t write_prefix(char* line, int level) noexcept {
  // The identity is a program name; bounding the prefix keeps room for the text (and tells the
  // compiler so: a summary line must not be cut to nothing).
  constexpr std::size_t kMaxPrefix = kLineSize / 4;
  const int n = std::snprintf(line, kMaxPrefix, "<%d>%s: ", level, identity.load(std::memory_order_relaxed));
  return n < 0 ? 0 : std::min(static_cast<std::size_t>(n), kMaxPrefix - 1);
}

void write_summary(const RepeatSlot& slot) noexcept {
  char line[kLineSize];
  std::size_t length = write_prefix(line, static_cast<int>(LogLevel::kWarning));
  const int m = std::snprintf(line + length, kLineSize - length, "suppressed %lu repeats of: %.*s",
                              static_cast<unsigned long>(slot.suppressed), static_cast<int>(slot.text_length),
                              slot.text);
  length += m < 0 ? 0 : static_cast<std::size_t>(m);
  write_line(line, length);
}

// Caller holds table_mutex. Reports and clears every slot whose window has passed.
void flush_expired(std::int64_t now_ns, std::int64_t window_ns) noexcept {
  for (RepeatSlot& slot : table) {
    if (slot.used && slot.suppressed > 0 && now_ns - slot.window_start_ns >= window_ns) {
      write_summary(slot);
      slot.suppressed = 0;
    }
  }
}

// Caller holds table_mutex. The slot for this line, reusing a free or the stalest one in its
// bucket; an evicted slot reports its suppressions first so no count is ever lost.
RepeatSlot& slot_for(std::uint64_t hash, bool& fresh) noexcept {
  RepeatSlot* bucket = &table[(hash % kBuckets) * kWays];
  RepeatSlot* victim = bucket;
  for (std::size_t i = 0; i < kWays; ++i) {
    RepeatSlot& slot = bucket[i];
    if (slot.used && slot.hash == hash) {
      fresh = false;
      return slot;
    }
    if (victim->used && (!slot.used || slot.window_start_ns < victim->window_start_ns)) {
      victim = &slot;
    }
  }
  if (victim->used && victim->suppressed > 0) {
    write_summary(*victim);
  }
  fresh = true;
  return *victim;
}

}  // namespace

void set_log_identity(const char* name) noexcept { identity.store(name, std::memory_order_relaxed); }

void set_log_level(LogLevel level) noexcept {
  max_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

std::optional<LogLevel> parse_log_level(std::string_view name) noexcept {
  struct Name {
    std::string_view text;
    LogLevel level;
  };
  static constexpr Name kNames[] = {{"debug", LogLevel::kDebug},
                                    {"info", LogLevel::kInfo},
                                    {"notice", LogLevel::kNotice},
                                    {"warning", LogLevel::kWarning},
                                    {"error", LogLevel::kError}};
  for (const Name& candidate : kNames) {
    if (candidate.text.size() == name.size() &&
        std::equal(name.begin(), name.end(), candidate.text.begin(), [](char a, char b) {
          return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
        })) {
      return candidate.level;
    }
  }
  return std::nullopt;
}

void set_log_rate_limit(unsigned burst, std::chrono::milliseconds window) noexcept {
  rate_burst.store(burst, std::memory_order_relaxed);
  rate_window_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(window).count(),
                       std::memory_order_relaxed);
}

void flush_log_suppressions() noexcept {
  const std::lock_guard lock(table_mutex);
  flush_expired(monotonic_ns(), rate_window_ns.load(std::memory_order_relaxed));
}

std::string escape_for_log(std::string_view text, std::size_t max_bytes) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  const bool cut = text.size() > max_bytes;
  if (cut) {
    std::size_t end = max_bytes;  // not inside a character: back to the start of the one it splits
    for (int i = 0; i < 3 && end > 0 && (static_cast<unsigned char>(text[end]) & 0xc0) == 0x80; ++i) --end;
    text = text.substr(0, end);
  }
  std::string out;
  out.reserve(text.size() + 8);
  const auto hex_byte = [&out](unsigned char b) {
    out += "\\x";
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  };
  for (std::size_t at = 0; at < text.size();) {
    const Utf8Sequence s = decode_utf8(text, at);
    if (s.length == 0) {
      hex_byte(static_cast<unsigned char>(text[at]));  // one byte at a time: resynchronises
      ++at;
      continue;
    }
    const char32_t c = s.code_point;
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (is_control(c)) {
      for (std::size_t i = 0; i < s.length; ++i) hex_byte(static_cast<unsigned char>(text[at + i]));
    } else if (c == 0x061c || c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) ||
               (c >= 0x2066 && c <= 0x2069) || c == 0x2028 || c == 0x2029) {
      char escaped[16];
      std::snprintf(escaped, sizeof escaped, "\\u{%04X}", static_cast<unsigned>(c));
      out += escaped;
    } else {
      out.append(text.substr(at, s.length));
    }
    at += s.length;
  }
  if (cut) out += "...";
  return out;
}

void log(LogLevel level, const char* format, ...) noexcept {
  const int priority = static_cast<int>(level);
  if (priority > max_level.load(std::memory_order_relaxed)) {
    return;
  }
  char line[kLineSize];
  const std::size_t prefix = write_prefix(line, priority);
  std::va_list args;
  va_start(args, format);
  const int m = std::vsnprintf(line + prefix, kLineSize - prefix, format, args);
  va_end(args);
  const std::size_t length = std::min(prefix + (m < 0 ? 0 : static_cast<std::size_t>(m)), kLineSize - 1);

  const unsigned burst = rate_burst.load(std::memory_order_relaxed);
  if (burst == 0) {
    write_line(line, length);
    return;
  }
  const std::string_view text(line + prefix, length - prefix);
  const std::uint64_t hash = hash_line(priority, text);
  const std::int64_t window_ns = rate_window_ns.load(std::memory_order_relaxed);

  // Writing under the lock keeps a summary ahead of the next copy of its line, and costs
  // nothing extra: concurrent writers to one stderr pipe queue in the kernel anyway.
  const std::lock_guard lock(table_mutex);
  const std::int64_t now_ns = monotonic_ns();
  flush_expired(now_ns, window_ns);
  bool fresh = false;
  RepeatSlot& slot = slot_for(hash, fresh);
  if (fresh || now_ns - slot.window_start_ns >= window_ns) {
    slot.used = true;
    slot.hash = hash;
    slot.window_start_ns = now_ns;
    slot.count = 0;
    slot.suppressed = 0;
    slot.text_length = std::min(text.size(), kKeptText);
    // The summary line quotes this text: cut between characters, never inside one.
    if (slot.text_length < text.size()) {
      while (slot.text_length > 0 && (static_cast<unsigned char>(text[slot.text_length]) & 0xc0) == 0x80) {
        --slot.text_length;
      }
    }
    std::memcpy(slot.text, text.data(), slot.text_length);
  }
  if (slot.count < UINT32_MAX) {
    ++slot.count;
  }
  if (slot.count > burst) {
    if (slot.suppressed < UINT32_MAX) {
      ++slot.suppressed;
    }
    return;
  }
  write_line(line, length);
}

}  // namespace vantage::platform
