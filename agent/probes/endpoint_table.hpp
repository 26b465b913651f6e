// Finds the target a datagram came from by its source address and port in one hash probe,
// instead of comparing it with every target: replies are matched per datagram, targets change
// only when a name resolves anew.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace vantage::agent::probes {

// An address family, 16 address bytes (IPv4 in the first 4) and a port: what a reply's sender
// and a target's endpoint are compared on (a link-local scope id is not: the kernel fills it in
// on receive).
struct EndpointKey {
  std::array<std::uint8_t, 16> address{};
  std::uint16_t port = 0;
  bool v6 = false;

  friend bool operator==(const EndpointKey&, const EndpointKey&) = default;

  // From a received sender; nullopt for a family other than IPv4 and IPv6.
  static std::optional<EndpointKey> of(const sockaddr_storage& peer) noexcept {
    EndpointKey k;
    if (peer.ss_family == AF_INET) {
      sockaddr_in s{};
      std::memcpy(&s, &peer, sizeof(s));  // a copy, not a cast: armhf's -Wcast-align
      std::memcpy(k.address.data(), &s.sin_addr, 4);
      k.port = ntohs(s.sin_port);
      return k;
    }
    if (peer.ss_family == AF_INET6) {
      sockaddr_in6 s{};
      std::memcpy(&s, &peer, sizeof(s));
      std::memcpy(k.address.data(), &s.sin6_addr, 16);
      k.port = ntohs(s.sin6_port);
      k.v6 = true;
      return k;
    }
    return std::nullopt;
  }

  std::uint64_t hash() const noexcept {
    std::uint64_t a = 0;
    std::uint64_t b = 0;
    std::memcpy(&a, address.data(), 8);
    std::memcpy(&b, address.data() + 8, 8);
    // A multiply-xorshift mix of the two halves, the port and the family.
    std::uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ULL)) + (std::uint64_t{port} << 1 | (v6 ? 1U : 0U));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
  }
};

// Open addressing with linear probing, at most half full; rebuilt whole when a target's
// endpoint changes (rare), so no deletion is needed.
class EndpointTable {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  // keys[i] is target i's endpoint, or nullopt when it has none; the first of equal keys wins.
  void rebuild(const std::vector<std::optional<EndpointKey>>& keys) {
    const std::size_t size = std::bit_ceil(std::max<std::size_t>(8, keys.size() * 2));
    slots_.assign(size, Slot{});
    mask_ = size - 1;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (!keys[i]) continue;
      std::size_t s = static_cast<std::size_t>(keys[i]->hash()) & mask_;
      while (slots_[s].target != kNone && !(slots_[s].key == *keys[i])) s = (s + 1) & mask_;
      if (slots_[s].target == kNone) slots_[s] = Slot{*keys[i], static_cast<std::uint32_t>(i)};
    }
  }

  // The target with this endpoint, or kNone.
  [[nodiscard]] std::uint32_t find(const EndpointKey& key) const noexcept {
    if (slots_.empty()) return kNone;
    for (std::size_t s = static_cast<std::size_t>(key.hash()) & mask_;; s = (s + 1) & mask_) {
      if (slots_[s].target == kNone) return kNone;
      if (slots_[s].key == key) return slots_[s].target;
    }
  }

 private:
  struct Slot {
    EndpointKey key;
    std::uint32_t target = kNone;
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

}  // namespace vantage::agent::probes
