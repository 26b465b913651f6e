#include "platform/utf8_text.hpp"

#include <cstdio>

namespace vantage::platform {

Utf8Sequence decode_utf8(std::string_view text, std::size_t at) noexcept {
  if (at >= text.size()) return {};
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[at + i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return {1, lead};
  std::size_t length = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if (lead >= 0xc2 && lead <= 0xdf) {  // 0xc0 and 0xc1 can only start overlong forms
    length = 2;
    cp = lead & 0x1f;
    min = 0x80;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    cp = lead & 0x0f;
    min = 0x800;
  } else if (lead >= 0xf0 && lead <= 0xf4) {  // 0xf5.. would start code points past U+10FFFF
    length = 4;
    cp = lead & 0x07;
    min = 0x10000;
  } else {
    return {};
  }
  if (text.size() - at < length) return {};
  for (std::size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xc0) != 0x80) return {};
    cp = (cp << 6) | (byte(i) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {};
  return {length, cp};
}

TextVerdict check_text(std::string_view text, std::size_t max_bytes) noexcept {
  if (text.size() > max_bytes) return {TextFault::kTooLong, text.size(), 0};
  for (std::size_t at = 0; at < text.size();) {
    const Utf8Sequence s = decode_utf8(text, at);
    if (s.length == 0) return {TextFault::kInvalidUtf8, at, 0};
    if (is_control(s.code_point)) return {TextFault::kControlCharacter, at, s.code_point};
    at += s.length;
  }
  return {};
}

std::string describe(const TextVerdict& verdict, std::size_t max_bytes) {
  char text[96];
  switch (verdict.fault) {
    case TextFault::kNone:
      return {};
    case TextFault::kTooLong:
      std::snprintf(text, sizeof text, "%zu bytes, over the limit of %zu", verdict.offset, max_bytes);
      break;
    case TextFault::kInvalidUtf8:
      std::snprintf(text, sizeof text, "invalid UTF-8 at byte %zu", verdict.offset);
      break;
    case TextFault::kControlCharacter:
      std::snprintf(text, sizeof text, "control character U+%04X at byte %zu",
                    static_cast<unsigned>(verdict.code_point), verdict.offset);
      break;
  }
  return text;
}

const char* to_string(TextFault fault) noexcept {
  switch (fault) {
    case TextFault::kNone:
      return "none";
    case TextFault::kTooLong:
      return "too_long";
    case TextFault::kInvalidUtf8:
      return "invalid_utf8";
    case TextFault::kControlCharacter:
      return "control_character";
  }
  return "unknown";
}

}  // namespace vantage::platform
