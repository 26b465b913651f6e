// CRC32C against published check values, and the slice-by-8 path against a bytewise one.
#include "agent/ship/crc32c.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace {

using vantage::agent::ship::crc32c;
using vantage::agent::ship::crc32c_extend;

std::vector<std::byte> bytes_of(const char* s) {
  std::vector<std::byte> v(std::strlen(s));
  std::memcpy(v.data(), s, v.size());
  return v;
}

}  // namespace

TEST_CASE("crc32c: check values from RFC 3720 and the common test vector") {
  CHECK(crc32c(bytes_of("123456789")) == 0xE3069283u);
  CHECK(crc32c({}) == 0u);
  std::vector<std::byte> zeros(32, std::byte{0});
  CHECK(crc32c(zeros) == 0x8A9136AAu);
  std::vector<std::byte> ones(32, std::byte{0xff});
  CHECK(crc32c(ones) == 0x62A8AB43u);
  std::vector<std::byte> inc(32);
  for (std::size_t i = 0; i < inc.size(); ++i) inc[i] = static_cast<std::byte>(i);
  CHECK(crc32c(inc) == 0x46DD794Eu);
}

TEST_CASE("crc32c: extending in pieces equals one pass, at every split and length") {
  std::vector<std::byte> data(100);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 131 + 7);
  for (std::size_t len = 0; len <= data.size(); ++len) {
    const std::span<const std::byte> all(data.data(), len);
    const std::uint32_t whole = crc32c(all);
    std::uint32_t bytewise = 0;
    for (std::size_t i = 0; i < len; ++i) bytewise = crc32c_extend(bytewise, all.subspan(i, 1));
    CHECK(bytewise == whole);
    for (std::size_t split = 0; split <= len; split += 3) {
      CHECK(crc32c_extend(crc32c(all.first(split)), all.subspan(split)) == whole);
    }
  }
}
