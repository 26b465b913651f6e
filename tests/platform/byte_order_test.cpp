#include "platform/byte_order.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>

using namespace vantage::platform;

TEST_CASE("byte_order: little- and big-endian loads and stores at any alignment") {
  std::array<unsigned char, 12> b{};
  store_le32(b.data() + 1, 0x04030201u);
  CHECK(b[1] == 1);
  CHECK(b[4] == 4);
  CHECK(load_le32(b.data() + 1) == 0x04030201u);
  CHECK(load_be32(b.data() + 1) == 0x01020304u);
  store_be16(b.data() + 3, 0xabcd);
  CHECK(b[3] == 0xab);
  CHECK(b[4] == 0xcd);
  CHECK(load_be16(b.data() + 3) == 0xabcd);
  CHECK(load_le16(b.data() + 3) == 0xcdab);
  store_le64(b.data() + 3, 0x0807060504030201ull);
  CHECK(b[3] == 1);
  CHECK(b[10] == 8);
  CHECK(load_le64(b.data() + 3) == 0x0807060504030201ull);
  store_be64(b.data() + 2, 0x0102030405060708ull);
  CHECK(b[2] == 1);
  CHECK(b[9] == 8);
  CHECK(load_be64(b.data() + 2) == 0x0102030405060708ull);
  CHECK(load_le64(b.data() + 2) == 0x0807060504030201ull);
  // std::byte buffers and the generic forms.
  std::array<std::byte, 4> s{};
  store_le(s.data(), std::uint32_t{0xdeadbeef});
  CHECK(load_le<std::uint32_t>(s.data()) == 0xdeadbeefu);
  CHECK(s[0] == std::byte{0xef});
  CHECK(load_le<std::uint8_t>(s.data() + 3) == 0xde);
}
