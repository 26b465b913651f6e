// A FlatBuffers string field as text: absent (null) reads as empty, so readers of optional
// fields need no null checks of their own.
#pragma once

#include <string>
#include <string_view>

#include "flatbuffers/flatbuffers.h"

namespace vantage::wire {

inline std::string_view str(const flatbuffers::String* s) noexcept {
  return s == nullptr ? std::string_view{} : std::string_view(s->c_str(), s->size());
}

inline std::string text(const flatbuffers::String* s) { return std::string(str(s)); }

}  // namespace vantage::wire
