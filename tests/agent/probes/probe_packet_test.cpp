// Tests for the probe datagram codec: exact byte layout, round trips, every malformed variant
// rejected with its own status, replies never longer than requests, random bytes never crash.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "agent/probes/probe_packet.hpp"
#include "platform/clock_state.hpp"

namespace {

namespace probes = vantage::agent::probes;
using probes::kProbeHeaderSize;
using probes::ProbeDecodeStatus;
using probes::ProbeHeader;
using probes::ProbeKind;

using Bytes = std::vector<std::byte>;

ProbeHeader sample_header() {
  ProbeHeader h;
  h.sequence = 0x0102030405060708ULL;
  h.sender_id = 0x1112131415161718ULL;
  h.send_ns = 0x2122232425262728ULL;
  return h;
}

Bytes request(std::size_t size, const ProbeHeader& h = sample_header()) {
  Bytes b(size);
  REQUIRE(probes::encode_request(h, b, size) == size);
  return b;
}

ProbeDecodeStatus decode(std::span<const std::byte> b, ProbeKind kind = ProbeKind::kRequest,
                         std::size_t max_size = probes::kMaxProbeSize) {
  ProbeHeader out;
  return probes::decode_probe(b, kind, out, max_size);
}

std::uint8_t at(const Bytes& b, std::size_t i) { return std::to_integer<std::uint8_t>(b[i]); }

}  // namespace

TEST_CASE("request bytes are little-endian at fixed offsets, padding zeroed") {
  const Bytes b = request(80);
  // Magic "VNTP", version 1, flags 0, reserved 0.
  CHECK(at(b, 0) == 'V');
  CHECK(at(b, 1) == 'N');
  CHECK(at(b, 2) == 'T');
  CHECK(at(b, 3) == 'P');
  CHECK(at(b, 4) == 1);
  CHECK(at(b, 5) == 0);
  CHECK(at(b, 6) == 0);
  CHECK(at(b, 7) == 0);
  for (std::size_t i = 0; i < 8; ++i) {
    CHECK(at(b, 8 + i) == 0x08 - i);   // sequence, least significant byte first
    CHECK(at(b, 16 + i) == 0x18 - i);  // sender id
    CHECK(at(b, 24 + i) == 0x28 - i);  // send time
  }
  for (std::size_t i = 32; i < b.size(); ++i) {
    CHECK(at(b, i) == 0);  // reply fields and padding
  }
}

TEST_CASE("request and reply round trip") {
  Bytes b = request(kProbeHeaderSize + 100);
  ProbeHeader req;
  REQUIRE(probes::decode_probe(b, ProbeKind::kRequest, req) == ProbeDecodeStatus::kOk);
  CHECK(req == sample_header());
  CHECK_FALSE(req.is_reply());

  // Padding as a prober might fill it: the reply must carry it back unchanged.
  for (std::size_t i = kProbeHeaderSize; i < b.size(); ++i) {
    b[i] = static_cast<std::byte>(i * 7);
  }
  const Bytes before = b;
  probes::ReplyStamp stamp;
  stamp.rx_ns = 1'000;
  stamp.tx_ns = 2'500;
  stamp.boot = 0xdeadbeefcafef00dULL;
  stamp.session_id = 7;
  stamp.session_rx = 0xfffffffe;
  stamp.kernel_rx_timestamp = true;
  probes::stamp_reply(b, stamp);

  CHECK(b.size() == before.size());
  CHECK(std::equal(b.begin() + kProbeHeaderSize, b.end(), before.begin() + kProbeHeaderSize));
  CHECK(decode(b, ProbeKind::kRequest) == ProbeDecodeStatus::kBadFlags);

  ProbeHeader rep;
  REQUIRE(probes::decode_probe(b, ProbeKind::kReply, rep) == ProbeDecodeStatus::kOk);
  CHECK(rep.is_reply());
  CHECK((rep.flags & probes::kFlagKernelRxTimestamp) != 0);
  CHECK(rep.sequence == req.sequence);
  CHECK(rep.sender_id == req.sender_id);
  CHECK(rep.send_ns == req.send_ns);
  CHECK(rep.reflector_rx_ns == 1'000);
  CHECK(rep.reflector_tx_ns == 2'500);
  CHECK(rep.reflector_boot == stamp.boot);
  CHECK(rep.session_id == 7);
  CHECK(rep.session_rx == 0xfffffffe);

  stamp.kernel_rx_timestamp = false;
  probes::stamp_reply(b, stamp);
  REQUIRE(probes::decode_probe(b, ProbeKind::kReply, rep) == ProbeDecodeStatus::kOk);
  CHECK(rep.flags == probes::kFlagReply);
}

TEST_CASE("encode_request refuses sizes outside the protocol or the buffer") {
  Bytes b(probes::kMaxProbeSize + 10);
  const ProbeHeader h = sample_header();
  CHECK(probes::encode_request(h, b, kProbeHeaderSize - 1) == 0);
  CHECK(probes::encode_request(h, b, 0) == 0);
  CHECK(probes::encode_request(h, b, probes::kMaxProbeSize + 1) == 0);
  CHECK(probes::encode_request(h, std::span(b).first(100), 101) == 0);
  CHECK(probes::encode_request(h, b, kProbeHeaderSize) == kProbeHeaderSize);
  CHECK(probes::encode_request(h, b, probes::kMaxProbeSize) == probes::kMaxProbeSize);
}

TEST_CASE("every malformed variant is rejected with its own status") {
  const Bytes good = request(kProbeHeaderSize);
  CHECK(decode(good) == ProbeDecodeStatus::kOk);

  SUBCASE("short") {
    for (std::size_t n = 0; n < kProbeHeaderSize; ++n) {
      CAPTURE(n);
      CHECK(decode(std::span(good).first(n)) == ProbeDecodeStatus::kTooShort);
    }
  }
  SUBCASE("foreign: wrong magic at any length") {
    for (std::size_t byte = 0; byte < 4; ++byte) {
      Bytes b = good;
      b[byte] ^= std::byte{0x20};
      CHECK(decode(b) == ProbeDecodeStatus::kBadMagic);
      CHECK(decode(std::span(b).first(10)) == ProbeDecodeStatus::kBadMagic);
      b.resize(probes::kMaxProbeSize + 100);
      CHECK(decode(b) == ProbeDecodeStatus::kBadMagic);
    }
  }
  SUBCASE("too long for the receiver or the protocol") {
    const Bytes b = request(200);
    CHECK(decode(b, ProbeKind::kRequest, 200) == ProbeDecodeStatus::kOk);
    CHECK(decode(b, ProbeKind::kRequest, 199) == ProbeDecodeStatus::kTooLong);
    Bytes huge = request(probes::kMaxProbeSize);
    huge.push_back(std::byte{0});
    CHECK(decode(huge, ProbeKind::kRequest, SIZE_MAX) == ProbeDecodeStatus::kTooLong);
  }
  SUBCASE("version") {
    for (const std::uint8_t v : {0, 2, 255}) {
      Bytes b = good;
      b[4] = std::byte{v};
      CHECK(decode(b) == ProbeDecodeStatus::kBadVersion);
    }
  }
  SUBCASE("flags") {
    for (unsigned f = 1; f < 256; ++f) {
      Bytes b = good;
      b[5] = static_cast<std::byte>(f);
      CAPTURE(f);
      // A request carries no flags at all.
      CHECK(decode(b, ProbeKind::kRequest) == ProbeDecodeStatus::kBadFlags);
      const bool valid_reply = (f & probes::kFlagReply) != 0 && (f & ~unsigned{probes::kKnownFlags}) == 0;
      CHECK((decode(b, ProbeKind::kReply) == ProbeDecodeStatus::kOk) == valid_reply);
    }
    CHECK(decode(good, ProbeKind::kReply) == ProbeDecodeStatus::kBadFlags);
  }
  SUBCASE("reserved") {
    for (const std::size_t i : {6u, 7u}) {
      Bytes b = good;
      b[i] = std::byte{1};
      CHECK(decode(b) == ProbeDecodeStatus::kBadReserved);
    }
  }
}

TEST_CASE("a failed decode leaves the output untouched") {
  ProbeHeader out = sample_header();
  out.session_rx = 99;
  const ProbeHeader before = out;
  Bytes b = request(kProbeHeaderSize);
  b[4] = std::byte{9};
  CHECK(probes::decode_probe(b, ProbeKind::kRequest, out) == ProbeDecodeStatus::kBadVersion);
  CHECK(out == before);
}

TEST_CASE("a reply is exactly as long as its request, at every size") {
  for (std::size_t size = kProbeHeaderSize; size <= probes::kMaxProbeSize; size += 97) {
    Bytes b = request(size);
    probes::stamp_reply(b, probes::ReplyStamp{});
    CHECK(b.size() == size);
    CHECK(decode(b, ProbeKind::kReply) == ProbeDecodeStatus::kOk);
  }
}

TEST_CASE("random and mutated bytes never crash the decoder") {
  std::mt19937_64 rng(12345);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> len(0, 200);
  const Bytes good = request(150);
  std::size_t ok = 0;
  for (int i = 0; i < 20'000; ++i) {
    // Exactly sized heap buffers, so ASan flags any read past the end.
    Bytes b;
    if (i % 2 == 0) {
      b.resize(len(rng));
      for (auto& x : b) {
        x = static_cast<std::byte>(byte(rng));
      }
    } else {
      b = good;
      b.resize(std::min(len(rng) + 30, good.size()));
      for (int k = 0; k < 3; ++k) {
        if (!b.empty()) {
          b[std::uniform_int_distribution<std::size_t>(0, b.size() - 1)(rng)] =
              static_cast<std::byte>(byte(rng));
        }
      }
    }
    ProbeHeader out;
    const auto status = probes::decode_probe(b, ProbeKind::kRequest, out, 120);
    CHECK(probes::to_string(status) != nullptr);
    if (status == ProbeDecodeStatus::kOk) {
      ++ok;
      CHECK(b.size() >= kProbeHeaderSize);
      CHECK(b.size() <= 120);
      probes::stamp_reply(b, probes::ReplyStamp{});
    }
  }
  // The mutated half keeps some valid probes, so the accepting path ran too.
  CHECK(ok > 0);
}

TEST_CASE("clock extension: request layout, reflector fill and one-way figures") {
  Bytes b = request(probes::kClockProbeSize);
  const std::uint16_t sender_ee =
      vantage::platform::encode_error_estimate({true, false, 40'000});
  REQUIRE(probes::write_clock_request(b, 1'000'000'000'000, sender_ee));
  CHECK(at(b, 64) == 'V');
  CHECK(at(b, 65) == 'N');
  CHECK(at(b, 66) == 'C');
  CHECK(at(b, 67) == 'X');
  CHECK(at(b, 68) == 1);
  CHECK(at(b, 69) == 0);
  // The request still decodes as a version-1 probe (old reflectors answer it).
  CHECK(decode(b) == ProbeDecodeStatus::kOk);
  auto ext = probes::read_clock_extension(b);
  REQUIRE(ext);
  CHECK_FALSE(ext->reflected);
  CHECK(ext->sender_tx_ns == 1'000'000'000'000);
  CHECK(ext->sender_error == sender_ee);

  // An old reflector: the padding comes back unchanged, so no one-way figures.
  probes::ProbeEvent old_event;
  probes::fill_one_way(old_event, b, 1'000'020'000'000);
  CHECK_FALSE(old_event.one_way);

  const std::uint16_t refl_ee = vantage::platform::encode_error_estimate({false, false, 10'000});
  CHECK(probes::stamp_clock_reply(b, 1'000'030'000'000, 1'000'030'100'000, refl_ee));
  CHECK(at(b, 69) == probes::kClockExtFilled);
  CHECK_FALSE(probes::stamp_clock_reply(b, 1, 2, refl_ee));  // filled once only
  ext = probes::read_clock_extension(b);
  REQUIRE(ext);
  CHECK(ext->reflected);
  CHECK(ext->reflector_rx_ns == 1'000'030'000'000);
  CHECK(ext->reflector_tx_ns == 1'000'030'100'000);
  CHECK(ext->reflector_error == refl_ee);

  probes::ProbeEvent e;
  probes::fill_one_way(e, b, 1'000'035'100'000);
  CHECK(e.one_way);
  CHECK(e.forward_ns == 30'000'000);
  CHECK(e.backward_ns == 5'000'000);
  CHECK(e.sender_synchronised);
  CHECK_FALSE(e.reflector_synchronised);
  CHECK(e.sender_error_ns >= 40'000);
  CHECK(e.reflector_error_ns >= 10'000);

  // Clocks apart: a negative one-way figure, not an overflow.
  probes::ProbeEvent skewed;
  probes::fill_one_way(skewed, b, 1'000'000'000'000);
  CHECK(skewed.backward_ns == -30'100'000);
}

TEST_CASE("clock extension: absent from short probes and from an old prober's zero padding") {
  Bytes small = request(probes::kClockProbeSize - 1);
  CHECK_FALSE(probes::write_clock_request(small, 1, 0));
  CHECK_FALSE(probes::read_clock_extension(small));
  CHECK_FALSE(probes::stamp_clock_reply(small, 1, 2, 3));
  Bytes old = request(200);
  const Bytes before = old;
  CHECK_FALSE(probes::stamp_clock_reply(old, 1, 2, 3));
  CHECK(old == before);  // a reflector never writes into padding that did not ask
  CHECK_FALSE(probes::read_clock_extension(old));
  CHECK(probes::kDefaultProbeSize >= probes::kClockProbeSize);
}
