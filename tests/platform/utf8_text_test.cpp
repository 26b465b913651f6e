// The checks for text from outside: UTF-8 validity (overlongs, surrogates, past U+10FFFF,
// truncation), control characters (C0, DEL, C1), the length bound, and the reasons they give.
#include "platform/utf8_text.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

namespace {

using vantage::platform::check_text;
using vantage::platform::decode_utf8;
using vantage::platform::describe;
using vantage::platform::TextFault;

TextFault fault_of(std::string_view text, std::size_t max = 64) { return check_text(text, max).fault; }

}  // namespace

TEST_CASE("utf8 text: ASCII, 2-, 3- and 4-byte characters pass") {
  CHECK(check_text("fra1-edge-01", 64));
  CHECK(check_text("", 64));
  CHECK(check_text("Z\xc3\xbcrich", 64));                      // ü
  CHECK(check_text("\xe6\x9d\xb1\xe4\xba\xac", 64));            // 東京
  CHECK(check_text("\xf0\x9f\x9a\x80 launch", 64));             // U+1F680, 4 bytes
  CHECK(check_text("\xf4\x8f\xbf\xbf", 64));                    // U+10FFFF, the last code point
  CHECK(check_text("\xe2\x80\x8f" "abc" "\xe2\x80\xae", 64));   // RLM and RLO: marks, not controls
  CHECK(check_text("\"quoted\" </script><b>x</b> & 'q'", 64));  // escaped at output, not refused
  CHECK(check_text("\xc2\xa0nbsp", 64));                        // U+00A0, just past C1
}

TEST_CASE("utf8 text: malformed sequences are invalid_utf8 with their offset") {
  const struct {
    std::string_view text;
    std::size_t offset;
    const char* what;
  } cases[] = {
      {"ab\xff", 2, "0xff is never UTF-8"},
      {"\x80", 0, "a stray continuation byte"},
      {"a\xc3", 1, "truncated 2-byte sequence"},
      {"\xe2\x82", 0, "truncated 3-byte sequence"},
      {"\xf0\x9f\x9a", 0, "truncated 4-byte sequence"},
      {"\xc3(", 0, "a lead byte without its continuation"},
      {"\xc0\xaf", 0, "overlong '/' in 2 bytes"},
      {"\xc1\xbf", 0, "overlong in 2 bytes (0xc1)"},
      {"\xe0\x80\xaf", 0, "overlong '/' in 3 bytes"},
      {"\xe0\x9f\xbf", 0, "overlong U+07FF in 3 bytes"},
      {"\xf0\x80\x80\xaf", 0, "overlong '/' in 4 bytes"},
      {"\xf0\x8f\xbf\xbf", 0, "overlong U+FFFF in 4 bytes"},
      {"x\xed\xa0\x80", 1, "a high surrogate U+D800"},
      {"\xed\xbf\xbf", 0, "a low surrogate U+DFFF"},
      {"\xf4\x90\x80\x80", 0, "U+110000, past the last code point"},
      {"\xf5\x80\x80\x80", 0, "0xf5 lead byte"},
      {"\xf8\x88\x80\x80\x80", 0, "a 5-byte form"},
      {"ok\xc0\x80", 2, "overlong NUL (modified UTF-8)"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const auto verdict = check_text(c.text, 64);
    CHECK(verdict.fault == TextFault::kInvalidUtf8);
    CHECK(verdict.offset == c.offset);
    CHECK(decode_utf8(c.text, c.offset).length == 0);
  }
}

TEST_CASE("utf8 text: C0, DEL and C1 controls are refused, the rest of Latin-1 is not") {
  for (unsigned c = 0; c < 0x20; ++c) {
    CAPTURE(c);
    CHECK(fault_of(std::string("a") + static_cast<char>(c)) == TextFault::kControlCharacter);
  }
  CHECK(fault_of("a\x7f") == TextFault::kControlCharacter);
  CHECK(fault_of("a\xc2\x80") == TextFault::kControlCharacter);  // U+0080
  CHECK(fault_of("a\xc2\x85") == TextFault::kControlCharacter);  // NEL, a line break to some
  CHECK(fault_of("a\xc2\x9f") == TextFault::kControlCharacter);  // U+009F
  CHECK(fault_of(std::string_view("a\0b", 3)) == TextFault::kControlCharacter);
  const auto verdict = check_text("ab\ncd", 64);
  CHECK(verdict.offset == 2);
  CHECK(verdict.code_point == U'\n');
  CHECK(describe(verdict, 64) == "control character U+000A at byte 2");
}

TEST_CASE("utf8 text: the bound is in bytes and checked first") {
  CHECK(check_text(std::string(64, 'a'), 64));
  const auto verdict = check_text(std::string(65, 'a'), 64);
  CHECK(verdict.fault == TextFault::kTooLong);
  CHECK(describe(verdict, 64) == "65 bytes, over the limit of 64");
  // 16 emoji are 64 bytes: at the bound; one more is over, whatever the character count.
  std::string emoji;
  for (int i = 0; i < 16; ++i) emoji += "\xf0\x9f\x98\x80";
  CHECK(check_text(emoji, 64));
  CHECK(fault_of(emoji + "a") == TextFault::kTooLong);
  // A long text with a bad byte early still reports its length: no decoding past the bound.
  CHECK(fault_of("\xff" + std::string(100, 'a')) == TextFault::kTooLong);
}

TEST_CASE("utf8 text: decode_utf8 gives the length and code point of each sequence") {
  const std::string_view text = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  CHECK(decode_utf8(text, 0).length == 1);
  CHECK(decode_utf8(text, 1).code_point == 0xe9);
  CHECK(decode_utf8(text, 3).length == 3);
  CHECK(decode_utf8(text, 3).code_point == 0x20ac);
  CHECK(decode_utf8(text, 6).length == 4);
  CHECK(decode_utf8(text, 6).code_point == 0x1f600);
  CHECK(decode_utf8(text, 10).length == 0);  // past the end
  CHECK(std::string(vantage::platform::to_string(TextFault::kInvalidUtf8)) == "invalid_utf8");
}
