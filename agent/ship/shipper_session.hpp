// The shipper's protocol state machine without any I/O of its own ("sans-IO"): Hello, the
// in-flight window, acks, RetryLater and Rejected, reconnect with backoff and jitter, failover,
// the ack timeout, spool flushes and the drain on shutdown. It reads time from an injected clock,
// asks a SessionIo to connect, write, close and arm timers, and is told what happened through the
// on_*() events. shipper.cpp drives it with Asio and TLS; the unit tests drive it with a fake
// clock and an in-memory collector, so every path runs without a socket or a real wait.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/measurement.hpp"
#include "agent/ship/batch_builder.hpp"
#include "agent/ship/shipper.hpp"
#include "agent/ship/spool.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::agent::ship {

using SessionClock = std::chrono::steady_clock;

// The session's timers, each armed at most once at a time.
enum class SessionTimer : std::size_t {
  kConnection,  // connect timeout, handshake timeout, ack timeout or reconnect backoff
  kFlush,       // the spool's interval fsync (SpoolConfig::Fsync::kInterval)
  kDrain,       // the drain limit on shutdown
};
inline constexpr std::size_t kSessionTimers = 3;

// What the session asks of its driver. Every call happens on the session's thread, and the driver
// reports the outcome later through the matching on_*() event, never from inside the call (except
// on_resolve_failed, which connect() may report before it returns).
class SessionIo {
 public:
  virtual ~SessionIo() = default;
  // Resolve and connect to the collector, then start the TLS handshake: on_resolve_failed, or
  // on_connect_failed, or on_connected followed by on_handshake_failed or on_session. Once the
  // session is up, read: on_bytes, on_peer_closed or on_read_failed.
  virtual void connect(const CollectorAddress& collector) = 0;
  // Write one whole frame (the session has at most one write outstanding, and keeps the bytes
  // alive until on_write_done or on_write_failed).
  virtual void write(std::span<const std::uint8_t> bytes) = 0;
  // Abandon the connection or the connect attempt: no further event may come from it.
  virtual void close() = 0;
  // Fire on_timer(timer) at the given time; replaces that timer's earlier arming.
  virtual void arm_timer(SessionTimer timer, SessionClock::time_point at) = 0;
  virtual void cancel_timer(SessionTimer timer) = 0;
};

class ShipperSession {
 public:
  using Now = std::function<SessionClock::time_point()>;

  // seed feeds the reconnect jitter (production: std::random_device).
  ShipperSession(ShipperConfig config, Spool spool, SessionIo& io, Now now, std::uint64_t seed);

  ShipperSession(const ShipperSession&) = delete;
  ShipperSession& operator=(const ShipperSession&) = delete;

  // Counters start from the spool's state; callable before the session's thread runs.
  void publish_spool_counters();
  // Arms the spool flush and makes the first connect attempt.
  void start();
  // Builds the report's Batch with the next seq, appends it to the spool and sends it when the
  // window has room. Ignored once shut_down() ran.
  void submit(MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets,
              std::uint64_t target_list_version = 0);
  // See Shipper::set_target_list_version and Shipper::add_measurement_baseline.
  void set_target_list_version(std::uint64_t version) { config_.target_list_version = version; }
  void add_measurement_baseline(std::uint64_t probe_ring_dropped, std::uint64_t load_ring_dropped) {
    config_.self_baseline.probe_ring_dropped += probe_ring_dropped;
    config_.self_baseline.load_ring_dropped += load_ring_dropped;
  }

  // Events from the driver.
  void on_resolve_failed(std::string_view error);
  void on_connect_failed(std::string_view error);
  void on_connected();  // TCP is up, the TLS handshake starts
  void on_handshake_failed(std::string_view error);
  void on_session(std::string_view tls_version, bool resumed);  // handshake done
  void on_bytes(std::span<const std::uint8_t> bytes);
  void on_write_done();
  void on_write_failed(std::string_view error);
  void on_peer_closed();
  void on_read_failed(std::string_view error);
  void on_timer(SessionTimer timer);

  // A collector's name has just resolved (or moved): a session waiting out a reconnect backoff
  // tries now instead of at the end of it (up to backoff_max later).
  void on_collector_resolved();

  // Calls done once everything spooled is acked, the collector refused this agent, or limit has
  // passed, whichever comes first. With a limit above zero, a session waiting out a reconnect
  // backoff tries once more right away rather than giving up or sleeping through it.
  void drain(std::chrono::milliseconds limit, std::function<void()> done);
  // Flushes the spool and closes the connection for good; unacked batches stay spooled.
  void shut_down();

  // Any thread.
  ShipperCounters counters() const;

  // The session's thread.
  const CollectorAddress& collector() const { return config_.collectors[collector_index_]; }
  const Spool& spool() const { return spool_; }
  std::uint32_t failures() const { return failures_; }  // since the last ack: the backoff exponent
  // The longest reconnect delay after `failures` failures: min(backoff_max, backoff_initial * 2^failures).
  std::chrono::milliseconds backoff_ceiling(std::uint32_t failures) const;

 private:
  enum class State { kIdle, kConnecting, kHandshaking, kReady, kBackoff };

  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(counters_mutex_);
    f(counters_);
  }

  void connect();
  void on_frame(const wire::Frame& frame, std::span<const std::uint8_t> bytes);
  void on_target_list(std::span<const std::uint8_t> bytes);
  void on_ack(const wire::Ack& ack);
  void pump();
  void write_next();
  void arm(SessionTimer timer, std::chrono::milliseconds after);
  void arm_ack_timer();
  void arm_flush();
  // Closes the connection and schedules a reconnect; `quiet` logs it at debug level (a repeat).
  void fail(const std::string& why, bool quiet = false);
  void schedule_reconnect();
  void check_drain();
  bool delivered() const;  // everything spooled is acked
  void spool_failed(const platform::Status& st);  // logged and counted
  void spool_synced();                            // a flush succeeded: ends a sync stall
  SelfMetrics self_metrics(const MeasurementReport& report, const SpoolStats& spool_stats);

  ShipperConfig config_;
  Spool spool_;
  BatchFrameBuilder batch_builder_;  // one builder, its buffer reused batch after batch
  SessionIo& io_;
  Now now_;
  std::mt19937_64 rng_;

  State state_ = State::kIdle;
  std::size_t collector_index_ = 0;
  std::uint32_t failures_ = 0;
  bool writing_ = false;
  bool stopping_ = false;
  // The collector refused this agent (identity, region): retrying keeps the spool draining once
  // an operator fixes it, but a stopping agent does not wait for acks that cannot come.
  bool refused_ = false;
  std::string last_refusal_;  // the collector's last Rejected reason (escaped), logged once
  std::uint64_t sent_through_ = 0;  // highest seq written on this connection
  std::deque<std::vector<std::uint8_t>> writes_;
  wire::FrameReader reader_;
  std::function<void()> drained_;  // drain()'s callback while it waits
  bool sync_stalled_ = false;      // an fsync outlasted its wait and has not been followed by a good one

  mutable std::mutex counters_mutex_;
  ShipperCounters counters_;
};

}  // namespace vantage::agent::ship
