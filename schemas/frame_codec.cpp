#include "schemas/frame_codec.hpp"

#include <cstring>

#include "platform/byte_order.hpp"
#include "platform/enum_names.hpp"

namespace vantage::wire {

using platform::load_le32;

void append_frame(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> flatbuffer) {
  std::uint8_t prefix[kFrameLengthSize];
  platform::store_le32(prefix, static_cast<std::uint32_t>(flatbuffer.size()));
  out.insert(out.end(), prefix, prefix + kFrameLengthSize);
  out.insert(out.end(), flatbuffer.begin(), flatbuffer.end());
}

const char* to_string(FrameStatus status) noexcept {
  static constexpr const char* kNames[] = {"incomplete frame", "frame", "frame length over the limit",
                                           "zero-length frame", "frame failed verification"};
  static_assert(platform::enum_table_covers<FrameStatus, FrameStatus::kInvalid>(kNames));
  return platform::enum_name(status, kNames);
}

const Frame* verify_frame(std::span<const std::uint8_t> flatbuffer) noexcept {
  if (flatbuffer.size() < 8 || !FrameBufferHasIdentifier(flatbuffer.data())) {
    return nullptr;
  }
  // Depth and table counts far above anything the agent writes, far below what would make
  // verification itself a denial of service.
  flatbuffers::Verifier verifier(flatbuffer.data(), flatbuffer.size(),
                                 flatbuffers::Verifier::Options{.max_depth = 16, .max_tables = 1'000'000});
  if (!VerifyFrameBuffer(verifier)) {
    return nullptr;
  }
  const Frame* frame = GetFrame(flatbuffer.data());
  // The verifier checks a vector's length field for 4-byte alignment, not its elements for
  // their own: a peer can place the 8-byte-aligned RttSample structs at an address that is only
  // 4-aligned, and reading them is then undefined (and an alignment fault on some ARM cores).
  if (const Batch* batch = frame->message_as_Batch(); batch != nullptr && batch->rtt_samples() != nullptr) {
    if (reinterpret_cast<std::uintptr_t>(batch->rtt_samples()->Data()) % alignof(RttSample) != 0) {
      return nullptr;
    }
  }
  return frame;
}

void FrameReader::feed(std::span<const std::uint8_t> bytes) {
  if (failed_) {
    return;
  }
  // Compact lazily: drop what earlier frames used before growing the buffer.
  if (consumed_ > 0) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_));
    consumed_ = 0;
  }
  frame_ = nullptr;
  frame_bytes_ = {};
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

void FrameReader::release_if_idle() {
  if (buffered() != 0) return;
  frame_ = nullptr;
  frame_bytes_ = {};
  consumed_ = 0;
  std::vector<std::uint8_t>().swap(buffer_);
  std::vector<std::uint8_t>().swap(aligned_);
}

FrameStatus FrameReader::next() {
  frame_ = nullptr;
  frame_bytes_ = {};
  if (failed_) {
    return failure_;
  }
  const std::size_t available = buffer_.size() - consumed_;
  if (available < kFrameLengthSize) {
    return FrameStatus::kNeedMore;
  }
  const std::uint32_t length = load_le32(buffer_.data() + consumed_);
  FrameStatus status = FrameStatus::kNeedMore;
  if (length == 0) {
    status = FrameStatus::kEmpty;
  } else if (length > max_frame_) {
    status = FrameStatus::kTooLarge;
  }
  if (status != FrameStatus::kNeedMore) {
    failed_ = true;
    failure_ = status;
    buffer_.clear();
    buffer_.shrink_to_fit();
    consumed_ = 0;
    return status;
  }
  if (available - kFrameLengthSize < length) {
    // Make room once for the whole frame; the limit above bounds this.
    buffer_.reserve(consumed_ + kFrameLengthSize + length);
    return FrameStatus::kNeedMore;
  }
  const std::span<const std::uint8_t> bytes(buffer_.data() + consumed_ + kFrameLengthSize, length);
  consumed_ += kFrameLengthSize + length;
  // The verifier checks that scalars are aligned to their size (8 bytes at most) relative to
  // memory; vector storage is, an offset inside it may not be. Such frames are copied.
  const Frame* frame = nullptr;
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % 8 == 0) {
    frame = verify_frame(bytes);
    frame_bytes_ = bytes;
  } else {
    aligned_.assign(bytes.begin(), bytes.end());
    frame = verify_frame(aligned_);
    frame_bytes_ = aligned_;
  }
  if (frame == nullptr) {
    failed_ = true;
    failure_ = FrameStatus::kInvalid;
    frame_bytes_ = {};
    return FrameStatus::kInvalid;
  }
  frame_ = frame;
  return FrameStatus::kFrame;
}

}  // namespace vantage::wire
