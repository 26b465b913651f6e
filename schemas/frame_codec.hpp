// Frames on the wire: a 4-byte little-endian length, then a FlatBuffers Frame. The reader
// checks the length against a limit before buffering anything and verifies every buffer
// before anyone reads it, so bytes from a peer are never trusted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vantage/telemetry_generated.h"

namespace vantage::wire {

inline constexpr std::size_t kFrameLengthSize = 4;
// Hello.capabilities bit: the agent applies TargetList frames. Older agents lack it, and the
// collector sends a TargetList to no agent without it.
inline constexpr std::uint64_t kCapabilityTargetList = 1u << 5;
// Default ceiling for one frame: a batch of a few hundred targets with histograms is tens of KiB.
inline constexpr std::uint32_t kDefaultMaxFrame = 4u << 20;

// Length prefix followed by the FlatBuffer, appended to out.
void append_frame(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> flatbuffer);

enum class FrameStatus : std::uint8_t {
  kNeedMore,  // no complete frame buffered yet
  kFrame,     // frame() is valid until the next call
  kTooLarge,  // the length prefix exceeds the limit: the stream cannot be trusted further
  kEmpty,     // a zero length prefix
  kInvalid,   // the FlatBuffers verifier rejected the buffer, or it is not a VNT1 Frame
};

const char* to_string(FrameStatus status) noexcept;

// Verifies a complete FlatBuffer (without its length prefix) as a Frame with our file
// identifier; nullptr if it does not verify. max_depth/max_tables bound the verifier's work.
const Frame* verify_frame(std::span<const std::uint8_t> flatbuffer) noexcept;

// Incremental reader for a byte stream. Feed it what the socket gave, then call next() until
// it says kNeedMore. Any status other than kNeedMore/kFrame is terminal: close the connection.
class FrameReader {
 public:
  explicit FrameReader(std::uint32_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}

  void feed(std::span<const std::uint8_t> bytes);
  FrameStatus next();

  // The current frame's verified root and its FlatBuffer bytes (valid after kFrame, until the
  // next feed() or next()).
  const Frame* frame() const noexcept { return frame_; }
  std::span<const std::uint8_t> frame_bytes() const noexcept { return frame_bytes_; }
  std::size_t buffered() const noexcept { return buffer_.size() - consumed_; }
  // Frees the buffers when no partial frame is held, so an idle connection keeps no memory of
  // its largest frame. Invalidates frame() and frame_bytes().
  void release_if_idle();
  std::uint32_t max_frame() const noexcept { return max_frame_; }

 private:
  std::uint32_t max_frame_;
  std::vector<std::uint8_t> buffer_;
  std::size_t consumed_ = 0;  // bytes of buffer_ already returned as frames
  const Frame* frame_ = nullptr;
  std::span<const std::uint8_t> frame_bytes_;
  std::vector<std::uint8_t> aligned_;  // a misaligned frame's copy
  bool failed_ = false;
  FrameStatus failure_ = FrameStatus::kNeedMore;
};

}  // namespace vantage::wire
