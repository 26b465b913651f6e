// The collector's ingest: accepts agents over mutually authenticated TLS, checks each Hello
// against the certificate and the regions served, verifies every frame, stores batches in
// SQLite (grouped into one transaction across connections) and acks each only after commit.
#pragma once

#include <asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "collector/store/batch_sink.hpp"
#include "platform/result.hpp"
#include "platform/tls/tls_context.hpp"

namespace vantage::collector {

namespace mesh {
struct MeshRules;
}

struct IngestConfig {
  // Each endpoint gets its own acceptor. An IPv6 wildcard ("::") is dual-stack (v6_only off),
  // so one listener serves IPv4 and IPv6.
  std::vector<asio::ip::tcp::endpoint> listen;
  platform::tls::TlsContextOptions tls;  // role is forced to server
  std::vector<std::string> regions;      // served; a Hello from any other region is refused
  std::string database;                  // SQLite file, used when no sink is given
  int retention_days = 30;               // of that SQLite store; 0 keeps everything
  // Where batches go; when null, start() opens the SQLite store at `database`.
  std::shared_ptr<store::BatchSink> sink;
  // Called on the store thread for every batch its sink newly stored (not for duplicates), after
  // the sink reported it durable; the batch is valid during the call only. Must not block.
  std::function<void(const store::IncomingBatch&)> on_stored;

  // Threads running sockets, TLS and frame verification; 0: one per core.
  std::size_t io_threads = 0;
  // Authenticated sessions (past the TLS handshake). start() raises RLIMIT_NOFILE to fit them and
  // the handshake budget, and lowers this cap (with a warning) where the hard limit does not.
  std::size_t max_sessions = 20'000;
  // The pre-authentication budget: TLS handshakes in progress, in all and per source address.
  // When the total is reached, the oldest handshake that has waited for its peer's bytes for at
  // least `evict_after` is closed, otherwise the new connection is; a source at its own cap gets
  // no more. A handshake waiting for this server's CPU is never evicted.
  std::size_t max_handshakes = 1024;
  std::size_t max_handshakes_per_source = 64;
  std::chrono::milliseconds evict_after{2'000};
  std::chrono::milliseconds handshake_timeout{10'000};
  // A connection that sends no frame for this long is closed (agents send a batch per
  // reporting interval, so this must be well above the interval).
  std::chrono::milliseconds idle_timeout{120'000};
  std::uint32_t max_frame = 4u << 20;
  // Batches stored but not yet acked per connection; reading pauses at this many.
  std::size_t max_pending_per_connection = 256;
  // Frames queued for the store, in bytes, across all connections. At the bound every
  // connection stops reading (TCP backpressure: agents keep spooling) until the store catches up.
  std::size_t store_queue_bytes = 64u << 20;
  // Acks written but not yet taken by the peer's socket; a peer over this is closed.
  std::size_t max_unsent_ack_bytes = 64u << 10;
  // Pre-authentication refusals are logged as one summary line per period, never one per
  // connection (they are peer-controlled).
  std::chrono::milliseconds refusal_summary_period{60'000};
  // The mesh ([mesh]): rules that turn the agents seen into each agent's target list, sent over
  // its session. Null or empty: no mesh, no TargetList is ever sent.
  std::shared_ptr<const mesh::MeshRules> mesh_rules;
  // A disconnected agent stays in the mesh (others keep probing it) this long; a reconnect within
  // it changes nothing for the others.
  std::chrono::milliseconds mesh_forget_after{600'000};
};

// Rejection reasons, as counted (and later exposed as metrics).
enum class Reject : std::uint8_t {
  kConnectionLimit,  // authenticated sessions at max_sessions
  kHandshake,        // TLS handshake failed: no or untrusted client certificate, garbage, ...
  kTimeout,          // handshake or idle timeout
  kNoIdentity,  // no client certificate identity
  kIdentity,    // Hello/Batch agent id differs from the certificate's
  kRegion,      // Hello from a region this collector does not serve
  kProtocol,    // a frame out of order (Batch before Hello, an Ack, a second Hello, seq 0)
  kFrame,       // length over the limit, zero, or verification failed
  kStore,       // the store failed; the agent was told to retry later
  kHandshakeLimit,  // handshakes in progress at max_handshakes, none old enough to evict
  kSourceLimit,     // the source address at max_handshakes_per_source
  kEvicted,         // the oldest handshake in progress, closed for a new connection
  kSlowReader,      // acks unsent past max_unsent_ack_bytes: the peer does not read
  kFdLimit,         // accept failed for lack of file descriptors
  // A string in a Hello or a Batch broke the peer-text rules (schemas/peer_text.hpp); the frame
  // is refused with the field and the rule in the Ack's reason.
  kStringTooLong,     // over its kind's length bound
  kInvalidUtf8,       // not valid UTF-8 (overlong, surrogate, past U+10FFFF, truncated, ...)
  kControlCharacter,  // a C0, DEL or C1 control character
  // The certificate is the identity (platform/tls/peer_identity.hpp):
  kCertificate,     // it names no valid vantage://<region>/<pop>/<agent-id> (none, two, malformed)
  kRegionMismatch,  // the Hello's (or a Batch's) region differs from the certificate's
  kPopMismatch,     // the Hello's (or a Batch's) PoP differs from the certificate's
  kRevoked,         // the CRL revokes it: at the handshake, on resumption, or after a reload
  kCrlExpired,      // the loaded CRL passed its nextUpdate: every full handshake fails until a reload
  kCertificateExpired,  // a live session's certificate passed its notAfter: closed
  kCount,
};
const char* to_string(Reject reason) noexcept;

// Upper bounds (seconds) of the sink latency histogram's buckets; a last, unbounded bucket
// follows. From a fast disk's fsync to a JetStream cluster under strain.
inline constexpr double kSinkLatencyBounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
inline constexpr std::size_t kSinkLatencyBuckets = std::size(kSinkLatencyBounds) + 1;

// One agent's target-list versions as the mesh sees them.
struct MeshAgentVersions {
  std::string region, pop, agent_id;
  std::uint64_t planned = 0;  // the planner's current list for it (0: not in the planner)
  std::uint64_t sent = 0;     // the newest list handed to its session (or that its Hello named)
  std::uint64_t running = 0;  // what it reports running (Hello, then each batch's AgentSelf)
  bool connected = false;
  bool accepts_lists = false;  // its Hello had the TargetList capability
  // Running a list other than the planned one (only agents that take lists can be stale).
  bool stale() const noexcept { return accepts_lists && planned != 0 && running != planned; }
};

struct MeshCounters {
  bool enabled = false;
  std::uint64_t agents = 0;  // in the planner (connected, or gone less than mesh_forget_after)
  std::uint64_t pops = 0;
  std::uint64_t planned_targets = 0;  // over all lists
  std::uint64_t lists_recomputed = 0;  // cumulative
  std::uint64_t lists_sent = 0;        // TargetList frames handed to sessions
  std::uint64_t lists_replaced = 0;    // unsent lists replaced by a newer one (a slow reader)
  std::uint64_t agents_stale = 0;
  std::vector<MeshAgentVersions> versions;  // by agent id
};

struct IngestCounters {
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_open = 0;
  std::uint64_t handshakes_in_progress = 0;
  std::uint64_t sessions_open = 0;     // authenticated
  std::uint64_t resumed_handshakes = 0;  // of `handshakes`, those that resumed a session ticket
  std::uint64_t store_queue_bytes = 0;   // frames queued or being stored
  std::uint64_t store_queue_peak_bytes = 0;
  std::uint64_t read_pauses = 0;  // times a connection stopped reading for the full store queue
  std::uint64_t handshakes = 0;
  std::uint64_t frames = 0;
  std::uint64_t batches_stored = 0;
  std::uint64_t batches_duplicate = 0;
  std::uint64_t acks_sent = 0;
  std::uint64_t commits = 0;
  std::int64_t last_commit_ns = 0;  // the SQLite COMMIT alone, in the last store() (SQLite sink)
  // Each sink store() call, from hand-over to durable: count per bucket (not cumulative) and sum.
  std::uint64_t sink_latency_buckets[kSinkLatencyBuckets] = {};
  double sink_latency_sum_s = 0.0;
  std::uint64_t batches_failed = 0;  // the sink failed them; their agents retry
  std::uint64_t rejects[static_cast<std::size_t>(Reject::kCount)] = {};
  // TLS material: reloads (SIGHUP) that took effect and that failed (the old material stays).
  std::uint64_t tls_reloads = 0;
  std::uint64_t tls_reload_failures = 0;
  // Unix times; 0: none. The collector's own certificate's notAfter, the CRL's nextUpdate (after
  // which every full handshake would fail), and the earliest notAfter among the agent
  // certificates of the sessions open now (authenticated, with a valid identity).
  std::int64_t certificate_not_after_s = 0;
  std::int64_t crl_next_update_s = 0;
  std::int64_t agent_certificate_earliest_not_after_s = 0;
  std::uint64_t crl_revoked_serials = 0;  // serials the loaded CRL lists
  MeshCounters mesh;
};

// Threads: io_threads io_contexts, each owning its connections (TLS, framing, verification),
// and one store thread that owns the sink. Accepted connections go round-robin to the io
// threads after the pre-authentication budget admitted them. The io threads queue verified
// batches (bounded in bytes); the store thread commits everything queued in one transaction and
// posts the outcomes back to each connection's thread, which then sends the Ack. A slow disk
// therefore delays acks and, at the queue bound, reads, never the handshakes of others.
class IngestServer {
 public:
  explicit IngestServer(IngestConfig config);
  ~IngestServer();  // stop()

  IngestServer(const IngestServer&) = delete;
  IngestServer& operator=(const IngestServer&) = delete;

  [[nodiscard]] platform::Status start();
  void stop();

  // Reads config.tls's certificate, key, CA and CRL again (SIGHUP). New handshakes use the new
  // material; established sessions keep theirs, except those whose certificate the new CRL
  // revokes, which are refused and closed. On failure (a file unreadable or invalid) the old
  // material stays, the failure is counted and the message says why. Any thread, after start().
  platform::Status reload_tls();

  // The bound endpoints (ephemeral ports resolved), valid after start().
  std::vector<asio::ip::tcp::endpoint> local_endpoints() const;
  IngestCounters counters() const;
  // The sink's name() ("sqlite", "jetstream"), valid after start().
  const char* sink_name() const noexcept;

  // True when every io thread answers a posted task within a second and the store thread is not
  // stuck: its queue is empty or it committed within the last 30 s.
  bool healthy() const;

  struct Impl;  // public only so the connection class in the .cpp can name it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace vantage::collector
