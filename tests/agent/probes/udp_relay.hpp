// A user-space network impairment relay for tests (the test kernels have no tc netem): sits
// between a prober and a reflector on loopback, delays, drops, duplicates and reorders chosen
// probes per direction, and records exactly what it did so tests can compare.
#pragma once

#include <asio/ip/udp.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace vantage::agent::probes::test {

enum class RelayDirection : std::uint8_t {
  kOutbound = 0,  // prober -> reflector (probes)
  kInbound = 1,   // reflector -> prober (replies)
};

// Impairments of one direction. Actions are keyed by probe sequence number (read with
// decode_probe; datagrams that are not probes pass through with the delay only) and apply to
// every datagram of that direction carrying the number.
struct RelayImpairment {
  // Each datagram is held base + uniform[-jitter, +jitter] (clamped at 0) before forwarding.
  std::chrono::nanoseconds base_delay{0};
  std::chrono::nanoseconds jitter{0};
  std::set<std::uint64_t> drop;
  std::set<std::uint64_t> duplicate;  // forwarded twice, back to back
  // Held back until the next datagram of the same direction has been forwarded, then sent
  // right after it: a deterministic swap, independent of timing.
  std::set<std::uint64_t> reorder;
};

struct UdpRelayConfig {
  asio::ip::udp::endpoint upstream;  // the reflector
  std::string listen_address;        // where the prober sends; the upstream's loopback if empty
  RelayImpairment outbound;
  RelayImpairment inbound;
  std::uint64_t seed = 1;  // for the delay jitter
  // The datagrams are unauthenticated STAMP: a probe's number is its Session-Sender Sequence
  // Number (outbound: the sender's seq; inbound: the one the reflector echoes).
  bool stamp = false;
  // A held-back datagram with no successor is released after this long anyway.
  std::chrono::milliseconds reorder_timeout{500};
  // The relay thread ends by itself after this long, so a failing test cannot hang.
  std::chrono::seconds lifetime{30};
};

inline constexpr std::uint64_t kRelayNotAProbe = ~std::uint64_t{0};

// One entry per datagram the relay read, in the order read.
struct RelayRecord {
  RelayDirection direction = RelayDirection::kOutbound;
  std::uint64_t seq = kRelayNotAProbe;
  bool dropped = false;
  bool duplicated = false;
  bool reordered = false;
  std::int64_t planned_delay_ns = 0;
  // From the read to the forwarding of the first copy, as measured by the relay; -1 when
  // dropped or not forwarded yet.
  std::int64_t applied_delay_ns = -1;
};

struct RelayCounts {
  std::uint64_t received = 0;
  std::uint64_t forwarded = 0;  // copies included
  std::uint64_t dropped = 0;
  std::uint64_t duplicated = 0;
  std::uint64_t reordered = 0;
};

// Runs its own thread (a ppoll loop) from construction until destruction or its lifetime.
class UdpRelay {
 public:
  explicit UdpRelay(UdpRelayConfig config);
  ~UdpRelay();

  UdpRelay(const UdpRelay&) = delete;
  UdpRelay& operator=(const UdpRelay&) = delete;

  // Where the prober should send its probes.
  asio::ip::udp::endpoint endpoint() const { return endpoint_; }

  std::vector<RelayRecord> records() const;
  // Sequence numbers in the order the relay sent them in one direction, copies included.
  std::vector<std::uint64_t> forwarded(RelayDirection direction) const;
  RelayCounts counts(RelayDirection direction) const;
  // Datagrams read but not yet forwarded or dropped.
  std::size_t pending() const;

 private:
  struct Pending {
    std::size_t record = 0;
    std::int64_t read_ns = 0;
    std::int64_t release_ns = 0;
    bool held = false;
    std::vector<std::byte> bytes;
  };

  void run();
  void read_from(int fd, RelayDirection direction, std::int64_t now);
  void release_due(std::int64_t now);
  void forward(const Pending& p, std::int64_t now);

  UdpRelayConfig config_;
  int front_ = -1;  // faces the prober
  int back_ = -1;   // faces the reflector
  asio::ip::udp::endpoint endpoint_;
  std::atomic<bool> stop_{false};

  mutable std::mutex mutex_;  // guards everything below, shared with the accessors
  std::vector<RelayRecord> records_;
  std::vector<std::uint64_t> forwarded_[2];
  RelayCounts counts_[2];
  std::vector<Pending> pending_;
  bool have_client_ = false;
  asio::ip::udp::endpoint client_;
  std::uint64_t rng_state_ = 0;

  std::thread thread_;  // last: starts once everything above is constructed
};

}  // namespace vantage::agent::probes::test
