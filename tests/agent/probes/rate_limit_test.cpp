// Tests for TokenBucket and SourceTable with a fake clock: burst, sustained rate, idle refill
// without overflow, and a table that stays bounded and evicts the stalest source.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>

#include "agent/probes/source_table.hpp"
#include "agent/probes/token_bucket.hpp"

namespace {

namespace probes = vantage::agent::probes;
using probes::SourceKey;
using probes::SourceTable;
using probes::TokenBucket;
using probes::TokenBucketConfig;

constexpr std::uint64_t kSecond = 1'000'000'000;

SourceKey key_for(std::uint32_t n, std::uint64_t qualifier = 0) {
  SourceKey k;
  k.address[10] = 0xff;
  k.address[11] = 0xff;
  k.address[12] = static_cast<std::uint8_t>(n >> 24);
  k.address[13] = static_cast<std::uint8_t>(n >> 16);
  k.address[14] = static_cast<std::uint8_t>(n >> 8);
  k.address[15] = static_cast<std::uint8_t>(n);
  k.qualifier = qualifier;
  return k;
}

}  // namespace

TEST_CASE("token bucket: burst, then the sustained rate") {
  const TokenBucketConfig cfg{.rate_per_s = 10, .burst = 5};
  TokenBucket b;
  std::uint64_t t = 1000 * kSecond;
  b.reset(cfg, t);
  for (int i = 0; i < 5; ++i) {
    CHECK(b.try_take(cfg, t));
  }
  CHECK_FALSE(b.try_take(cfg, t));
  // 10/s: one token per 100 ms, not before.
  t += kSecond / 10 - 1;
  CHECK_FALSE(b.try_take(cfg, t));
  t += 1;
  CHECK(b.try_take(cfg, t));
  CHECK_FALSE(b.try_take(cfg, t));

  // One simulated second at 100 attempts/s (10x over rate) lets exactly 10 through.
  int passed = 0;
  for (int i = 0; i < 100; ++i) {
    t += kSecond / 100;
    passed += b.try_take(cfg, t) ? 1 : 0;
  }
  CHECK(passed == 10);
}

TEST_CASE("token bucket: long idle refills to burst without overflow, time going back refills nothing") {
  const TokenBucketConfig cfg{.rate_per_s = UINT32_MAX, .burst = UINT32_MAX};
  TokenBucket b;
  b.reset(cfg, 0);
  CHECK(b.try_take(cfg, 0));
  b.reset(TokenBucketConfig{.rate_per_s = 1, .burst = 3}, 0);
  const TokenBucketConfig small{.rate_per_s = 1'000'000, .burst = 3};
  for (int i = 0; i < 3; ++i) {
    CHECK(b.try_take(small, 0));
  }
  CHECK_FALSE(b.try_take(small, 0));
  CHECK(b.try_take(small, UINT64_MAX));  // elapsed * rate would overflow 64 bits
  CHECK(b.tokens() == 2);
  CHECK(b.try_take(small, 5));  // clock went backwards: no refill, but tokens remain
  CHECK(b.try_take(small, 5));
  CHECK_FALSE(b.try_take(small, 5));
}

TEST_CASE("source table finds, inserts and stays bounded") {
  SourceTable<int> table(1024, 0x1234);
  CHECK(table.capacity() == 1024);
  bool inserted = false;
  table.find_or_insert(key_for(1), 1, inserted).value = 42;
  CHECK(inserted);
  CHECK(table.find_or_insert(key_for(1), 2, inserted).value == 42);
  CHECK_FALSE(inserted);
  // Same address, other qualifier: a separate record.
  CHECK(table.find_or_insert(key_for(1, 9), 3, inserted).value == 0);
  CHECK(inserted);

  // A flood of distinct (spoofed) sources recycles slots instead of growing.
  for (std::uint32_t i = 0; i < 100'000; ++i) {
    table.find_or_insert(key_for(1'000'000 + i), 10 + i, inserted);
    CHECK(inserted);
  }
  CHECK(table.capacity() == 1024);
  // Sets fill unevenly, so some evictions happen before every slot is taken.
  CHECK(table.evictions() >= 100'000 + 2 - 1024);
  CHECK(table.evictions() <= 100'000);
}

TEST_CASE("source table evicts the stalest record of a full set") {
  // One set: every key competes for the same kWays slots.
  constexpr std::size_t kWays = SourceTable<int>::kWays;
  SourceTable<int> table(1, 99);
  CHECK(table.capacity() == kWays);
  bool inserted = false;
  for (std::uint32_t i = 0; i < kWays; ++i) {
    table.find_or_insert(key_for(i), 100 + i, inserted).value = static_cast<int>(i) + 1;
  }
  // Refresh key 0, so key 1 is now the stalest.
  table.find_or_insert(key_for(0), 1000, inserted);
  CHECK_FALSE(inserted);
  table.find_or_insert(key_for(500), 1001, inserted).value = 500;
  CHECK(inserted);
  CHECK(table.evictions() == 1);
  CHECK(table.find_or_insert(key_for(0), 1002, inserted).value == 1);
  CHECK_FALSE(inserted);
  for (std::uint32_t i = 2; i < kWays; ++i) {
    CHECK(table.find_or_insert(key_for(i), 1003, inserted).value == static_cast<int>(i) + 1);
    CHECK_FALSE(inserted);
  }
  // Key 1 was the one evicted: it comes back fresh.
  CHECK(table.find_or_insert(key_for(1), 1004, inserted).value == 0);
  CHECK(inserted);
}
