#include "platform/clock_state.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>

using namespace vantage::platform;

namespace {
unsigned scale_of(std::uint16_t bits) { return (bits >> 8) & 0x3fu; }
unsigned multiplier_of(std::uint16_t bits) { return bits & 0xffu; }
}  // namespace

TEST_CASE("clock_state: Error Estimate bits follow RFC 4656 (S, Z, Scale, Multiplier)") {
  // 1 s: the finest scale whose multiplier fits 8 bits is 25 (128 * 2^(25 - 32) s).
  const std::uint16_t one_s = encode_error_estimate({true, false, 1'000'000'000});
  CHECK((one_s & 0x8000u) != 0);
  CHECK((one_s & 0x4000u) == 0);
  CHECK(scale_of(one_s) == 25);
  CHECK(multiplier_of(one_s) == 128);
  CHECK(decode_error_estimate(one_s).error_ns == 1'000'000'000);
  CHECK(decode_error_estimate(one_s).synchronised);
  const std::uint16_t ptp = encode_error_estimate({false, true, 50'000});
  CHECK((ptp & 0x8000u) == 0);
  CHECK((ptp & 0x4000u) != 0);
  CHECK(decode_error_estimate(ptp).ptp_format);
  CHECK_FALSE(decode_error_estimate(ptp).synchronised);
}

TEST_CASE("clock_state: encoding rounds up, never to a smaller bound, and stays tight") {
  for (std::int64_t ns : {1LL, 7LL, 999LL, 1'000LL, 50'000LL, 123'457LL, 1'000'000LL, 16'000'000'000LL,
                          3'600'000'000'000LL}) {
    const auto decoded = decode_error_estimate(encode_error_estimate({true, false, ns})).error_ns;
    CHECK(decoded >= ns);
    // Within one multiplier step: the finest scale keeps the multiplier above 127, so < 1 % + 1 ns.
    CHECK(decoded <= ns + ns / 100 + 1);
  }
}

TEST_CASE("clock_state: a zero error is sent with multiplier 1 and huge errors saturate") {
  const std::uint16_t zero = encode_error_estimate({true, false, 0});
  CHECK(multiplier_of(zero) == 1);
  CHECK(scale_of(zero) == 0);
  CHECK(decode_error_estimate(zero).error_ns == 1);  // 2^-32 s, rounded up to 1 ns
  CHECK(multiplier_of(encode_error_estimate({true, false, -5})) == 1);
  const std::uint16_t max = encode_error_estimate({true, false, std::numeric_limits<std::int64_t>::max()});
  CHECK(multiplier_of(max) != 0);
  CHECK(decode_error_estimate(max).error_ns == std::numeric_limits<std::int64_t>::max());
  CHECK(decode_error_estimate(0x3fff).error_ns == std::numeric_limits<std::int64_t>::max());
}

TEST_CASE("clock_state: the kernel's state reads without privilege") {
  const ClockState s = read_kernel_clock_state();
  CHECK(s.estimated_error_ns >= 0);
  CHECK(s.maximum_error_ns >= 0);
  CHECK(s.source != ClockSource::kConfigured);
}

TEST_CASE("clock_state: an assumed state replaces the kernel's until withdrawn") {
  ClockStateCell cell;
  const ClockState kernel = cell.current();
  CHECK(kernel.source != ClockSource::kConfigured);
  cell.assume(ClockState{true, 50'000, 50'000, ClockSource::kUnknown});
  const ClockState assumed = cell.current();
  CHECK(assumed.synchronised);
  CHECK(assumed.estimated_error_ns == 50'000);
  CHECK(assumed.maximum_error_ns == 50'000);
  CHECK(assumed.source == ClockSource::kConfigured);
  // Held in whole microseconds, rounded up.
  cell.assume(ClockState{false, 1, 1'001, ClockSource::kUnknown});
  CHECK_FALSE(cell.current().synchronised);
  CHECK(cell.current().estimated_error_ns == 1'000);
  CHECK(cell.current().maximum_error_ns == 2'000);
  cell.assume(std::nullopt);
  CHECK(cell.current().source != ClockSource::kConfigured);
  CHECK(&ClockStateCell::instance() == &ClockStateCell::instance());
}
