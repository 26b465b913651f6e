// CRC32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of every spool record and
// of the spool's state file. Portable slice-by-8 so x86_64, aarch64 and armhf write identical bits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vantage::agent::ship {

namespace crc32c_detail {

inline constexpr std::uint32_t kPoly = 0x82F63B78u;

using Tables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t i = 0; i < 256; ++i) {
    for (std::size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
  }
  return t;
}

inline constexpr Tables kTables = make_tables();

inline std::uint32_t byte_at(const std::byte* p, std::size_t i) {
  return std::to_integer<std::uint32_t>(p[i]);
}

}  // namespace crc32c_detail

// Continues a CRC: crc32c_extend(crc32c_extend(0, a), b) == crc32c(a ++ b), so a record's header and
// its payload are checksummed without copying them together.
inline std::uint32_t crc32c_extend(std::uint32_t crc, std::span<const std::byte> data) {
  using crc32c_detail::byte_at;
  const auto& t = crc32c_detail::kTables;
  std::uint32_t c = ~crc;
  const std::byte* p = data.data();
  std::size_t n = data.size();
  // Bytes are assembled explicitly (not loaded as a word), so neither alignment nor host byte
  // order matters.
  while (n >= 8) {
    const std::uint32_t lo =
        c ^ (byte_at(p, 0) | byte_at(p, 1) << 8 | byte_at(p, 2) << 16 | byte_at(p, 3) << 24);
    c = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
        t[3][byte_at(p, 4)] ^ t[2][byte_at(p, 5)] ^ t[1][byte_at(p, 6)] ^ t[0][byte_at(p, 7)];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) c = t[0][(c ^ byte_at(p++, 0)) & 0xffu] ^ (c >> 8);
  return ~c;
}

inline std::uint32_t crc32c(std::span<const std::byte> data) { return crc32c_extend(0, data); }

}  // namespace vantage::agent::ship
