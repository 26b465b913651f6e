// Fixed-capacity table of per-source state (rate limits, probe sessions) keyed by peer address:
// spoofed sources can only evict the stalest entries, never grow memory or slow lookups.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace vantage::agent::probes {

// A peer address in IPv6 form (IPv4 as ::ffff:a.b.c.d, so that a dual-stack socket and an
// IPv4 socket key the same host identically) plus a 64-bit qualifier (0, or the probe's
// sender id for sessions).
struct SourceKey {
  std::array<std::uint8_t, 16> address{};
  std::uint64_t qualifier = 0;

  friend bool operator==(const SourceKey&, const SourceKey&) = default;
};

// Set-associative: a key hashes to one set of kWays slots and lives in one of them; a miss
// in a full set replaces the slot used least recently. Lookup cost is bounded by kWays and
// all memory is allocated by the constructor. The hash is keyed with a per-instance secret,
// so a remote peer cannot choose addresses that all land in one set to push a particular
// source out.
template <typename Value>
class SourceTable {
 public:
  static constexpr std::size_t kWays = 8;

  struct Slot {
    SourceKey key;
    std::uint64_t last_seen_ns = 0;
    bool used = false;
    Value value{};
  };

  // capacity is rounded up to a power-of-two number of sets of kWays slots (minimum one set).
  SourceTable(std::size_t capacity, std::uint64_t hash_secret)
      : set_mask_(round_sets(capacity) - 1), secret_(hash_secret), slots_((set_mask_ + 1) * kWays) {}

  std::size_t capacity() const noexcept { return slots_.size(); }

  // Returns the slot for key, creating it (value default-initialised, inserted = true) when
  // absent, and marks it used at now_ns. Never fails.
  Slot& find_or_insert(const SourceKey& key, std::uint64_t now_ns, bool& inserted) noexcept {
    Slot* set = &slots_[(hash(key) & set_mask_) * kWays];
    Slot* victim = set;
    for (std::size_t i = 0; i < kWays; ++i) {
      Slot& s = set[i];
      if (s.used && s.key == key) {
        s.last_seen_ns = now_ns;
        inserted = false;
        return s;
      }
      // Free slots first, then the stalest.
      if (!s.used ? victim->used : (victim->used && s.last_seen_ns < victim->last_seen_ns)) {
        victim = &s;
      }
    }
    if (victim->used) {
      ++evictions_;
    }
    victim->key = key;
    victim->last_seen_ns = now_ns;
    victim->used = true;
    victim->value = Value{};
    inserted = true;
    return *victim;
  }

  std::uint64_t evictions() const noexcept { return evictions_; }

 private:
  static std::size_t round_sets(std::size_t capacity) noexcept {
    std::size_t sets = 1;
    while (sets * kWays < capacity) {
      sets <<= 1;
    }
    return sets;
  }

  // Keyed multiply-xorshift mixing over the 24 key bytes: not a MAC, but without the secret
  // the set a key maps to is unpredictable, which is all the eviction policy needs.
  std::uint64_t hash(const SourceKey& key) const noexcept {
    std::uint64_t words[2];
    std::memcpy(words, key.address.data(), sizeof(words));
    std::uint64_t h = secret_;
    for (const std::uint64_t w : {words[0], words[1], key.qualifier}) {
      h = mix(h ^ w);
    }
    return h;
  }

  static std::uint64_t mix(std::uint64_t x) noexcept {
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
  }

  std::size_t set_mask_;
  std::uint64_t secret_;
  std::uint64_t evictions_ = 0;
  std::vector<Slot> slots_;
};

}  // namespace vantage::agent::probes
