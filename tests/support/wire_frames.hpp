// Test frames as an agent sends them: one message wrapped in a Frame and copied out of its
// builder; read back, as the collector reads them, only once the Verifier has passed them.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <vector>

#include "vantage/telemetry_generated.h"

namespace vantage::test {

using Bytes = std::vector<std::uint8_t>;

inline Bytes finish_frame(flatbuffers::FlatBufferBuilder& fbb, wire::Message type,
                          flatbuffers::Offset<void> message) {
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, type, message));
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

inline Bytes finish_batch(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<wire::Batch> batch) {
  return finish_frame(fbb, wire::Message::Batch, batch.Union());
}

inline bool verifies(const Bytes& bytes) {
  flatbuffers::Verifier verifier(bytes.data(), bytes.size());
  return wire::VerifyFrameBuffer(verifier);
}

// What the ingest hands over: null unless the buffer passes the Verifier and holds a Batch.
inline const wire::Batch* verified_batch(const Bytes& bytes) {
  return verifies(bytes) ? wire::GetFrame(bytes.data())->message_as_Batch() : nullptr;
}

}  // namespace vantage::test
