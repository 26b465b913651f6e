// Checks for text that came from outside (peers, config files, /sys): valid UTF-8 (no overlong
// forms, surrogates or code points past U+10FFFF), a length bound, no control characters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vantage::platform {

// The UTF-8 sequence starting at text[at]: its length in bytes and its code point, or length 0
// when the bytes there are not a valid sequence (truncated, a stray continuation byte, an
// overlong form, a surrogate, above U+10FFFF, or 0xF8..0xFF).
struct Utf8Sequence {
  std::size_t length = 0;
  char32_t code_point = 0;
};
Utf8Sequence decode_utf8(std::string_view text, std::size_t at) noexcept;

// C0 (U+0000..U+001F), DEL (U+007F) and C1 (U+0080..U+009F).
constexpr bool is_control(char32_t c) noexcept { return c < 0x20 || (c >= 0x7f && c <= 0x9f); }

enum class TextFault : std::uint8_t {
  kNone,
  kTooLong,           // more bytes than the bound
  kInvalidUtf8,       // see decode_utf8
  kControlCharacter,  // see is_control
};

// What check_text found: the first fault and the byte offset where it is (for kTooLong, the
// length). Converts to true when the text is acceptable.
struct TextVerdict {
  TextFault fault = TextFault::kNone;
  std::size_t offset = 0;
  char32_t code_point = 0;  // kControlCharacter: which one
  explicit operator bool() const noexcept { return fault == TextFault::kNone; }
};

// Valid UTF-8 of at most max_bytes bytes without control characters. The length is checked
// first, so a long text costs no decoding. Empty text passes (callers that need a value say so).
TextVerdict check_text(std::string_view text, std::size_t max_bytes) noexcept;

// "invalid UTF-8 at byte 3", "control character U+000A at byte 5", "300 bytes, over the limit of
// 64"; empty for an acceptable verdict.
std::string describe(const TextVerdict& verdict, std::size_t max_bytes);

// A short machine name for counting: "too_long", "invalid_utf8", "control_character", "none".
const char* to_string(TextFault fault) noexcept;

}  // namespace vantage::platform
