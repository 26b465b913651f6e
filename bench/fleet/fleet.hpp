// Fleet: thousands of simulated agents on a few Asio io threads. Each agent speaks the real
// protocol (TLS 1.3 mutual auth with its own TlsContext, so its own saved session; Hello; Batches
// with strictly increasing seq, each acked) and behaves like agent/ship/shipper.cpp on failure:
// reconnect with exponential backoff and full jitter, resend everything unacked, never give up.
#pragma once

#include <asio/ip/address_v4.hpp>
#include <asio/ip/tcp.hpp>

#include <atomic>
#include <limits>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/aggregate/latency_histogram.hpp"
#include "bench/fleet/batch_factory.hpp"
#include "platform/clock.hpp"
#include "platform/tls/tls_context.hpp"

namespace vantage::fleet {

// A TCP socket bound to `source` with the port left to connect(): with many agents per source
// address the 4-tuple, not the bound port alone, has to be unique. Null with ec set on failure.
std::unique_ptr<asio::ip::tcp::socket> socket_from(asio::io_context& io, const asio::ip::address_v4& source,
                                                   std::error_code& ec);

struct FleetOptions {
  asio::ip::tcp::endpoint collector;
  // When not empty: agent i connects to collectors[i % size()] instead (several collectors).
  std::vector<asio::ip::tcp::endpoint> collectors;
  std::string server_name = "127.0.0.1";  // what the collector's certificate must name
  std::size_t io_threads = 2;
  std::size_t agents_per_source = 100;  // agents sharing one source address 127.0.0.X
  unsigned first_source = 1;            // X of the first source address
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds handshake_timeout{30'000};
  // TCP connects and TLS handshakes the simulator runs at once (split over its io threads); the
  // others wait their turn. Real agents each have their own CPU: without this bound the
  // simulator's own queue of half-done handshakes would make the collector see slow peers.
  std::size_t max_handshakes_in_flight = 128;
  std::chrono::milliseconds ack_timeout{60'000};
  // As the agent's shipper: uniform in [0, min(max, initial * 2^failures)].
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  std::chrono::nanoseconds report_interval{10'000'000'000};  // the batches' interval length
};

struct AgentSetup {
  AgentIdentity identity;
  std::shared_ptr<platform::tls::TlsContext> tls;
};

// Counters summed over all agents (those marked "now" are states, the rest totals).
struct FleetStats {
  std::uint64_t full_handshakes = 0;
  std::uint64_t resumed_handshakes = 0;
  std::uint64_t connect_failures = 0;  // TCP connect refused or timed out
  std::uint64_t tls_failures = 0;      // handshake failed or timed out
  std::uint64_t disconnects = 0;       // an established session ended (error, EOF, refusal)
  std::uint64_t retry_later = 0;
  std::uint64_t rejected = 0;
  std::uint64_t ack_timeouts = 0;
  std::uint64_t frames_sent = 0;   // batch frames written, resends included
  std::uint64_t batches_acked = 0;  // distinct (agent, incarnation, seq) acked as stored
  std::uint64_t summaries_acked = 0;
  std::uint64_t connected_now = 0;
  std::uint64_t agents_acked = 0;   // agents with at least one ack
  std::uint64_t unacked_now = 0;    // batches made and not yet acked
  std::uint64_t storm_done = 0;     // agents acked for a batch made after mark_storm()
  std::int64_t storm_last_ack_ns = 0;  // CLOCK_MONOTONIC of the latest of those
  agent::LatencyHistogram ack_latency;  // batch made -> its ack, ns (batches made while recording)
  std::string last_reject_reason;

  void add(const FleetStats& other);
};

// Per agent, for checking the store afterwards.
struct AgentRecord {
  std::string agent_id;
  std::array<std::uint8_t, 16> incarnation{};  // its Hello's: every batch it made is under it
  std::uint64_t acked_through = 0;  // every seq 1..acked_through was acked as stored
  std::uint64_t made_through = 0;   // highest seq made (sent or waiting)
};

class Fleet {
 public:
  Fleet(FleetOptions options, const BatchFactory& factory, std::vector<AgentSetup> agents);
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  std::size_t size() const noexcept { return size_; }
  // Connects every agent, spreading the starts evenly over ramp (blocks for ramp).
  void connect_all(std::chrono::milliseconds ramp);
  // Each agent makes a batch every interval, starting at a random phase in [0, interval).
  void start_periodic(std::chrono::nanoseconds interval, std::uint64_t seed);
  // Each agent keeps `window` batches in flight: the next is made as soon as one is acked.
  void start_window(std::size_t window);
  // No more batches are made; those made still go until acked.
  void stop_sending();
  // Every agent makes one batch now.
  void send_one_each();
  // Storm bookkeeping: every agent makes one new batch now and counts as back once it is acked.
  void mark_storm();
  // Ack latency is recorded for batches made from now on (a backlog made before, e.g. while
  // agents were still connecting, is not the measured window's latency) until turned off.
  void set_recording(bool on) noexcept {
    record_since_ns_.store(on ? platform::monotonic_ns() : std::numeric_limits<std::int64_t>::max());
  }
  FleetStats stats(bool reset_latency = false);
  std::vector<AgentRecord> records();
  // Polls stats() every 100 ms until done(stats) or the timeout; returns the last stats.
  FleetStats wait_until(const std::function<bool(const FleetStats&)>& done, std::chrono::milliseconds timeout,
                        bool* reached = nullptr);
  // Closes every connection and stops the io threads.
  void shutdown();

  struct Shard;

 private:
  void for_each_agent(const std::function<void(class SimAgent&)>& f);

  FleetOptions options_;
  const BatchFactory& factory_;
  std::size_t size_ = 0;
  std::atomic<std::int64_t> record_since_ns_{std::numeric_limits<std::int64_t>::max()};
  std::vector<std::unique_ptr<Shard>> shards_;
  bool shut_down_ = false;
};

}  // namespace vantage::fleet
