// Length-prefixed framing: frames split anywhere by the network come out whole and verified;
// oversized, empty and unverifiable frames end the stream instead of being read.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "schemas/frame_codec.hpp"

namespace wire = vantage::wire;
using wire::FrameReader;
using wire::FrameStatus;
using Bytes = std::vector<std::uint8_t>;

namespace {

Bytes ack_frame(std::uint64_t seq, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb;
  auto ack = wire::CreateAckDirect(fbb, seq, wire::AckStatus::Stored, reason.c_str());
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Union()));
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

Bytes fixture(const std::string& name) {
  std::ifstream in(std::string(VANTAGE_FIXTURES_DIR) + "/" + name, std::ios::binary);
  REQUIRE(in.good());
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("frames: split at every byte boundary they come out whole, in order, verified") {
  Bytes stream;
  // Reasons of odd lengths make the frames' sizes odd, so later frames start misaligned.
  for (std::uint64_t seq = 1; seq <= 5; ++seq) {
    wire::append_frame(stream, ack_frame(seq, std::string(seq * 3, 'x')));
  }
  wire::append_frame(stream, fixture("telemetry_v1_batch.bin"));
  wire::append_frame(stream, fixture("telemetry_v1_hello.bin"));

  for (const std::size_t chunk :
       {std::size_t{1}, std::size_t{3}, std::size_t{7}, std::size_t{64}, stream.size()}) {
    CAPTURE(chunk);
    FrameReader reader;
    std::vector<wire::Message> types;
    std::vector<std::uint64_t> seqs;
    for (std::size_t at = 0; at < stream.size(); at += chunk) {
      const std::size_t n = std::min(chunk, stream.size() - at);
      reader.feed({stream.data() + at, n});
      for (;;) {
        const FrameStatus s = reader.next();
        if (s == FrameStatus::kNeedMore) {
          break;
        }
        REQUIRE(s == FrameStatus::kFrame);
        REQUIRE(reader.frame() != nullptr);
        types.push_back(reader.frame()->message_type());
        if (const auto* ack = reader.frame()->message_as_Ack()) {
          seqs.push_back(ack->seq());
          CHECK(ack->reason()->size() == ack->seq() * 3);
        }
      }
    }
    CHECK(reader.buffered() == 0);
    REQUIRE(types.size() == 7);
    CHECK(seqs == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
    CHECK(types[5] == wire::Message::Batch);
    CHECK(types[6] == wire::Message::Hello);
  }
}

TEST_CASE("frames: an over-limit or zero length ends the stream before anything is buffered") {
  SUBCASE("over the limit") {
    FrameReader reader(1024);
    const Bytes prefix{0x01, 0x04, 0x00, 0x00};  // 1025
    reader.feed(prefix);
    CHECK(reader.next() == FrameStatus::kTooLarge);
    CHECK(reader.buffered() == 0);
    // Terminal: later bytes, even a good frame, are not read.
    Bytes good;
    wire::append_frame(good, ack_frame(1, "ok"));
    reader.feed(good);
    CHECK(reader.next() == FrameStatus::kTooLarge);
  }
  SUBCASE("a length of 4 GiB - 1 is refused from the prefix alone") {
    FrameReader reader;
    reader.feed(Bytes{0xff, 0xff, 0xff, 0xff});
    CHECK(reader.next() == FrameStatus::kTooLarge);
  }
  SUBCASE("zero") {
    FrameReader reader;
    reader.feed(Bytes{0, 0, 0, 0});
    CHECK(reader.next() == FrameStatus::kEmpty);
  }
}

TEST_CASE("frames: garbage, a foreign identifier and a damaged buffer fail verification") {
  SUBCASE("random bytes behind a plausible length") {
    std::mt19937 rng(5);
    for (int i = 0; i < 200; ++i) {
      Bytes body(static_cast<std::size_t>(8 + rng() % 300));
      for (auto& b : body) b = static_cast<std::uint8_t>(rng());
      Bytes stream;
      wire::append_frame(stream, body);
      FrameReader reader;
      reader.feed(stream);
      const FrameStatus s = reader.next();
      // Random bytes essentially never carry "VNT1" at offset 4 and verify; if they did, the
      // root would still be safe to read, which is all the verifier promises.
      CHECK((s == FrameStatus::kInvalid || s == FrameStatus::kFrame));
      if (s == FrameStatus::kInvalid) {
        CHECK(reader.frame() == nullptr);
        CHECK(reader.next() == FrameStatus::kInvalid);
      }
    }
  }
  SUBCASE("another file identifier") {
    Bytes body = ack_frame(9, "x");
    body[4] = 'X';
    CHECK(wire::verify_frame(body) == nullptr);
  }
  SUBCASE("every truncation of a batch that cuts into its data") {
    const Bytes batch = fixture("telemetry_v1_batch.bin");
    // The last few bytes can be alignment padding no offset points into; cutting them leaves
    // a buffer that is still entirely safe to read, which is what verification means.
    for (std::size_t n = 0; n + 8 < batch.size(); ++n) {
      CAPTURE(n);
      CHECK(wire::verify_frame({batch.data(), n}) == nullptr);
    }
  }
  SUBCASE("a truncated stream waits for the rest and never yields a partial frame") {
    Bytes stream;
    wire::append_frame(stream, ack_frame(3, "partial"));
    stream.pop_back();
    FrameReader reader;
    reader.feed(stream);
    CHECK(reader.next() == FrameStatus::kNeedMore);
    CHECK(reader.frame() == nullptr);
  }
}

TEST_CASE("frames: a batch whose 8-byte structs sit at a 4-byte boundary is refused") {
  // Found by the frame fuzzer: the FlatBuffers verifier checks a vector's length field for
  // alignment, not its elements, so rtt_samples (8-byte-aligned structs) could be misaligned.
  // The file is the fuzzer's input: a chunk-size byte, then the stream.
  const Bytes input = fixture("frames/misaligned_rtt_samples.bin");
  REQUIRE(input.size() > 1);
  FrameReader reader;
  reader.feed({input.data() + 1, input.size() - 1});
  FrameStatus status = FrameStatus::kNeedMore;
  while ((status = reader.next()) == FrameStatus::kFrame) {
    const wire::Batch* batch = reader.frame()->message_as_Batch();
    if (batch != nullptr && batch->rtt_samples() != nullptr) {
      CHECK(reinterpret_cast<std::uintptr_t>(batch->rtt_samples()->Data()) % alignof(wire::RttSample) == 0);
    }
  }
  CHECK(status == FrameStatus::kInvalid);
}
