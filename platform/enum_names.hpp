// Names of the values of a contiguous enum (kFirst = 0, ...), from one table per enum: the
// to_string() of statuses, reasons and sources, without a switch of returns each.
#pragma once

#include <cstddef>
#include <iterator>
#include <type_traits>

namespace vantage::platform {

// names[i] names the value i. A table must cover every value: pair it with
// static_assert(enum_table_covers<E, kLast>(names)) at its definition.
template <typename E, std::size_t N>
constexpr const char* enum_name(E value, const char* const (&names)[N], const char* unknown = "unknown") noexcept {
  static_assert(std::is_enum_v<E>);
  const auto i = static_cast<std::size_t>(static_cast<std::underlying_type_t<E>>(value));
  return i < N ? names[i] : unknown;
}

template <typename E, E kLast, std::size_t N>
constexpr bool enum_table_covers(const char* const (&)[N]) noexcept {
  return static_cast<std::size_t>(kLast) + 1 == N;
}

}  // namespace vantage::platform
