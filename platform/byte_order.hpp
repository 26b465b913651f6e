// Fixed-width integers to and from byte buffers in little-endian (the project's own wire and
// file formats) or big-endian (network order: IP and ICMP headers) order.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace vantage::platform {

// Shifts rather than a byte-swapped memcpy: the same code is correct on any host byte order,
// and compilers turn it into a single unaligned load or store on x86_64, aarch64 and armhf.
// The pointers need no alignment, so untrusted buffers are never cast to structs.
template <std::unsigned_integral T>
T load_le(const void* p) noexcept {
  unsigned char b[sizeof(T)];
  std::memcpy(b, p, sizeof(T));
  T v = 0;
  for (std::size_t i = sizeof(T); i-- > 0;) {
    v = static_cast<T>((v << 8) | b[i]);
  }
  return v;
}

template <std::unsigned_integral T>
T load_be(const void* p) noexcept {
  unsigned char b[sizeof(T)];
  std::memcpy(b, p, sizeof(T));
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    v = static_cast<T>((v << 8) | b[i]);
  }
  return v;
}

template <std::unsigned_integral T>
void store_le(void* p, T v) noexcept {
  unsigned char b[sizeof(T)];
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    b[i] = static_cast<unsigned char>(v >> (8 * i));
  }
  std::memcpy(p, b, sizeof(T));
}

template <std::unsigned_integral T>
void store_be(void* p, T v) noexcept {
  unsigned char b[sizeof(T)];
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    b[sizeof(T) - 1 - i] = static_cast<unsigned char>(v >> (8 * i));
  }
  std::memcpy(p, b, sizeof(T));
}

inline std::uint16_t load_le16(const void* p) noexcept { return load_le<std::uint16_t>(p); }
inline std::uint32_t load_le32(const void* p) noexcept { return load_le<std::uint32_t>(p); }
inline std::uint64_t load_le64(const void* p) noexcept { return load_le<std::uint64_t>(p); }
inline std::uint16_t load_be16(const void* p) noexcept { return load_be<std::uint16_t>(p); }
inline std::uint32_t load_be32(const void* p) noexcept { return load_be<std::uint32_t>(p); }
inline std::uint64_t load_be64(const void* p) noexcept { return load_be<std::uint64_t>(p); }
inline void store_le16(void* p, std::uint16_t v) noexcept { store_le(p, v); }
inline void store_le32(void* p, std::uint32_t v) noexcept { store_le(p, v); }
inline void store_le64(void* p, std::uint64_t v) noexcept { store_le(p, v); }
inline void store_be16(void* p, std::uint16_t v) noexcept { store_be(p, v); }
inline void store_be32(void* p, std::uint32_t v) noexcept { store_be(p, v); }
inline void store_be64(void* p, std::uint64_t v) noexcept { store_be(p, v); }

}  // namespace vantage::platform
