#include "platform/rx_timestamp.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <optional>

using vantage::platform::kMaxRxStampAgeNs;
using vantage::platform::monotonic_rx_time;
using vantage::platform::plausible_rx_stamp;
using vantage::platform::RxTime;

namespace {
constexpr std::int64_t kRead = 5'000'000'000;
constexpr std::int64_t kOffset = 1'700'000'000'000'000'000;  // realtime - monotonic
}  // namespace

TEST_CASE("rx_timestamp: a stamp is plausible from the read time back to the age bound, inclusive") {
  CHECK(plausible_rx_stamp(kRead, kRead));
  CHECK(plausible_rx_stamp(kRead - 1, kRead));
  CHECK(plausible_rx_stamp(kRead - kMaxRxStampAgeNs, kRead));
  CHECK_FALSE(plausible_rx_stamp(kRead - kMaxRxStampAgeNs - 1, kRead));  // too old: a step back
  CHECK_FALSE(plausible_rx_stamp(kRead + 1, kRead));                     // in the future: a step forward
}

TEST_CASE("rx_timestamp: the kernel stamp is moved onto the monotonic line, or the read time is used") {
  // 20 us in the socket queue.
  RxTime t = monotonic_rx_time(kRead - 20'000 + kOffset, kOffset, kRead);
  CHECK(t.kernel);
  CHECK(t.ns == kRead - 20'000);
  CHECK(t.read_ns == kRead);

  // Boundaries, as plausible_rx_stamp.
  CHECK(monotonic_rx_time(kRead + kOffset, kOffset, kRead).kernel);
  CHECK(monotonic_rx_time(kRead - kMaxRxStampAgeNs + kOffset, kOffset, kRead).kernel);
  for (const std::int64_t stamp : {kRead + 1, kRead - kMaxRxStampAgeNs - 1, std::int64_t{0}}) {
    t = monotonic_rx_time(stamp + kOffset, kOffset, kRead);
    CHECK_FALSE(t.kernel);
    CHECK(t.ns == kRead);
  }

  // No stamp (the option refused, as under QEMU): the read time.
  t = monotonic_rx_time(std::nullopt, kOffset, kRead);
  CHECK_FALSE(t.kernel);
  CHECK(t.ns == kRead);
}

TEST_CASE("rx_timestamp: a kernel stamp before the send time falls back to the read time") {
  RxTime t = monotonic_rx_time(kRead - 1'000 + kOffset, kOffset, kRead);
  t.not_before(kRead - 1'000);  // sent at the stamp's instant: kept
  CHECK(t.kernel);
  CHECK(t.ns == kRead - 1'000);
  t.not_before(kRead - 999);
  CHECK_FALSE(t.kernel);
  CHECK(t.ns == kRead);
  // A user-space time is never replaced.
  RxTime user = monotonic_rx_time(std::nullopt, kOffset, kRead);
  user.not_before(kRead + 5);
  CHECK(user.ns == kRead);
}

TEST_CASE("rx_timestamp: reading the clocks now accepts a fresh stamp and rejects a stepped one") {
  const std::int64_t now_real = vantage::platform::realtime_ns();
  RxTime t = monotonic_rx_time(now_real);
  CHECK(t.kernel);
  CHECK(t.ns <= t.read_ns);
  CHECK(t.read_ns - t.ns < kMaxRxStampAgeNs);
  t = monotonic_rx_time(now_real - 2 * kMaxRxStampAgeNs);
  CHECK_FALSE(t.kernel);
}

TEST_CASE("rx_timestamp: rx_time applies the rule within one clock (the reflector's CLOCK_REALTIME)") {
  using vantage::platform::rx_time;
  CHECK(rx_time(kRead, kRead).kernel);
  CHECK(rx_time(kRead - kMaxRxStampAgeNs, kRead).ns == kRead - kMaxRxStampAgeNs);
  for (const std::int64_t stamp : {kRead + 1, kRead - kMaxRxStampAgeNs - 1}) {
    const RxTime t = rx_time(stamp, kRead);
    CHECK_FALSE(t.kernel);
    CHECK(t.ns == kRead);
  }
  CHECK(rx_time(std::nullopt, kRead).ns == kRead);
  CHECK_FALSE(rx_time(std::nullopt, kRead).kernel);
}
