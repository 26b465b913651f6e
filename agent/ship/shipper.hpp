// The agent's delivery path: every report becomes a Batch appended to the disk spool, and one
// TLS connection to a collector sends what the spool holds, in order, until acked. At least
// once: a batch leaves the spool only when the collector says it is durable.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/measurement.hpp"
#include "agent/ship/batch_builder.hpp"
#include "agent/ship/spool.hpp"
#include "agent/ship/target_list.hpp"
#include "platform/result.hpp"
#include "platform/tls/tls_context.hpp"

namespace vantage::agent::ship {

struct CollectorAddress {
  std::string host;  // IP address or DNS name
  std::uint16_t port = 7443;
  // The name the collector's certificate must carry (subjectAltName); the host when empty.
  std::string server_name;
};

// What earlier shippers and measurements of this process counted: a reload replaces both, and
// the self-metrics in each batch stay cumulative for the process.
struct SelfBaseline {
  std::uint64_t config_generation = 1;
  std::uint64_t sessions = 0;  // TLS sessions established
  std::uint64_t connect_failures = 0;
  std::uint64_t tls_failures = 0;
  std::uint64_t rejected = 0;
  std::uint64_t spool_errors = 0;
  std::uint64_t spool_lost = 0;
  std::uint64_t spool_sync_stalls = 0;
  // Records an earlier spool of this process gave up as unreadable (already in spool_lost): the
  // next spool, if it has the same incarnation, skips them without counting them again.
  SpoolBadSeqs spool_bad;
  std::uint64_t probe_ring_dropped = 0;
  std::uint64_t load_ring_dropped = 0;
};

struct ShipperConfig {
  AgentIdentity identity;
  // Tried in order; after a failure the next one, wrapping around. All must serve the agent's
  // region: the agent never sends one region's data to another's collectors.
  std::vector<CollectorAddress> collectors;
  platform::tls::TlsContextOptions tls;  // role is forced to client
  SpoolConfig spool;
  std::uint64_t capabilities = 0;  // Hello.capabilities
  // Where this agent's reflector answers (Hello.reflectors), so the collector can point other
  // agents at it; empty: nothing announced.
  std::vector<asio::ip::udp::endpoint> reflectors;
  // Hello.target_list_version until set_target_list_version(): the list the agent starts with.
  std::uint64_t target_list_version = 0;
  // Called on the shipper's thread with each TargetList that passed every check; it must not
  // block (the session goes on). Without it (or without kCapabilityTargetList) a TargetList is
  // refused like a bad one.
  std::function<void(AcceptedTargetList)> on_target_list;
  TargetListLimits target_list_limits;
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds handshake_timeout{10'000};
  // Unacked data outstanding this long without an ack means the collector is stuck: reconnect.
  std::chrono::milliseconds ack_timeout{30'000};
  // Reconnect delay: uniform in [0, min(backoff_max, backoff_initial * 2^failures)] ("full
  // jitter"), so agents cut off together do not come back together.
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  // Collector names are resolved in the background (never on the shipper's thread, which the
  // watchdog watches), retried and refreshed on this schedule.
  ResolveSchedule resolve;
  std::size_t max_in_flight = 32;  // batches sent ahead of their acks
  std::uint32_t max_frame = 4u << 20;
  SelfBaseline self_baseline;
};

struct ShipperCounters {
  std::uint64_t batches_spooled = 0;
  // Spool calls that failed (disk full, I/O); a failed append loses its batch (spool.lost()). The
  // spool's own retried errors (spool.retried_errors) come on top in the self-metrics.
  std::uint64_t spool_errors = 0;
  std::uint64_t frames_sent = 0;
  std::uint64_t acked_seq = 0;
  std::uint64_t connects = 0;          // TLS sessions established
  std::uint64_t connect_failures = 0;  // TCP connect or timeout
  std::uint64_t tls_failures = 0;      // handshake failed
  std::uint64_t rejected = 0;          // the collector refused us (identity, region)
  std::uint64_t retry_later = 0;
  std::uint64_t resumed = 0;  // handshakes that resumed a session
  std::uint64_t target_lists_accepted = 0;  // handed on to the agent
  std::uint64_t target_lists_refused = 0;   // failed a check: refused whole, the session went on
  std::string last_target_list_error;       // why the latest refused list was refused
  bool connected = false;
  std::string last_error;  // the most recent reason a connection failed or ended
  SpoolStats spool;
  SpoolBadSeqs spool_bad;  // as of the last publish (shut_down publishes at the end)
};

// Adds what a stopped shipper counted to the baseline its successor starts from.
void add_to_baseline(SelfBaseline& baseline, const ShipperCounters& counters);

// Threads: one io_context thread owns the spool, the connection and every timer. submit() and
// stop() may be called from any thread; counters() from any thread.
class Shipper {
 public:
  // Opens the spool (recovering it) and the TLS context. Errors name the file at fault. The
  // spool's recovery warnings are appended to warnings, also when the open then fails: the
  // caller logs them either way.
  [[nodiscard]] static platform::Result<std::unique_ptr<Shipper>> open(ShipperConfig config,
                                                                       std::vector<std::string>& warnings);
  ~Shipper();  // stop(0)

  Shipper(const Shipper&) = delete;
  Shipper& operator=(const Shipper&) = delete;

  void start();

  // Builds the report's Batch with the next seq and appends it to the spool, on the shipper's
  // thread; the batch goes out as soon as a connection has room.
  // target_list_version: the mesh list the report's interval ran (AgentSelf.target_list_version).
  void submit(MeasurementReport report, std::vector<ProbeTargetSpec> targets,
              std::uint64_t target_list_version = 0);

  // The list version the next Hello announces (a list applied while connected).
  void set_target_list_version(std::uint64_t version);
  // What a measurement that ended under this shipper counted (its ring drops), so the
  // self-metrics stay cumulative when the next measurement starts from zero. Ordered after the
  // ended measurement's last submit().
  void add_measurement_baseline(std::uint64_t probe_ring_dropped, std::uint64_t load_ring_dropped);

  // Waits up to drain for everything spooled to be acked (while connected), flushes the spool
  // and stops. Unacked batches stay spooled for the next start.
  void stop(std::chrono::milliseconds drain);

  ShipperCounters counters() const;

  // True when the shipper's thread runs a posted task within timeout: a wedged shipper (a stuck
  // lock) stops the daemon's watchdog pings. A hung fsync does not: the spool's syncs run on its
  // sync worker and the shipper waits for one at most SpoolConfig::sync_wait (a stall, counted).
  bool responsive(std::chrono::milliseconds timeout) const;

  struct Impl;

 private:
  explicit Shipper(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::agent::ship
