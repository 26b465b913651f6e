// One agent connection's protocol without its I/O: the handshake and idle deadlines, the Hello
// checks, frame limits and verification, batches for the store, acks in the order the batches
// came, and the slow-reader bound. The TLS connection in ingest_server.cpp drives it with bytes,
// store outcomes, write completions and timer ticks; tests drive it with frames and a manual clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "collector/ingest_server.hpp"
#include "collector/mesh_sessions.hpp"
#include "platform/tls/peer_identity.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::collector {

// Time as the session sees it: monotonic for deadlines, wall clock for labelling batches.
class SessionClock {
 public:
  virtual ~SessionClock() = default;
  virtual std::int64_t monotonic_ns() const = 0;
  virtual std::int64_t realtime_ns() const = 0;
};

// CLOCK_MONOTONIC and CLOCK_REALTIME.
const SessionClock& system_session_clock() noexcept;

// Where a session's counts go: the server's shared counters (and, before authentication, its
// periodic refusal summary), or a test's.
class SessionTally {
 public:
  virtual ~SessionTally() = default;
  virtual void count(Reject reason) = 0;
  virtual void refuse_pre_auth(const std::string& source, Reject reason) = 0;
  virtual void count_frame() = 0;
  virtual void count_ack(bool duplicate) = 0;
};

// A verified batch for the store, labelled with the identity its connection proved.
struct SessionBatch {
  std::vector<std::uint8_t> frame;  // the verified FlatBuffer, without its length prefix
  std::string agent_id, region, pop, arch, software_version;
  std::int64_t received_ns = 0;  // wall clock
  std::uint64_t seq = 0;
  store::Incarnation incarnation{};  // from Hello (legacy all zero when it had none)
};

// Inputs are the on_* calls; outputs are read after each: take_batches() for the store queue,
// next_write() for the socket (in order, one at a time, confirmed by on_written()), closed() for
// the connection, deadline_ns() for its timer. Single-threaded: the connection's io thread.
class IngestSession {
 public:
  // The handshake deadline (config.handshake_timeout) starts now. `peer` (address:port) names
  // the connection in log lines; `source` (address) is what pre-authentication refusals count.
  IngestSession(const IngestConfig& config, const SessionClock& clock, SessionTally& tally, std::string peer,
                std::string source);

  // The TLS handshake failed: a pre-authentication refusal, counted as `reason` (kRevoked when
  // the CRL revokes the certificate; kHandshake for everything else).
  void on_handshake_failed(const std::string& why, Reject reason = Reject::kHandshake);
  // The TLS handshake succeeded for the identity the client certificate names (from the ticket
  // when resumed): agent id, region and PoP are taken from it, never from Hello; one that names
  // none validly is refused. With `session_available` false the server is at max_sessions and the
  // agent is told to retry later.
  void on_authenticated(platform::tls::PeerIdentity peer, bool resumed, bool session_available);
  // The CRL revokes this session's certificate (found after a reload, or as the handshake ended):
  // refused with that reason and closed once the answer is written.
  void revoke();
  // The certificate's notAfter has passed while the session was open: refused with that reason
  // (certificate_expired) and closed once the answer is written.
  void expire();
  // Plaintext from the peer: every complete frame in it is handled. Ignored once closing.
  void on_bytes(std::span<const std::uint8_t> bytes);
  // The store's outcome for a batch of this session's (by seq, in any order or grouping): acks
  // go out in the order the batches arrived, each once every batch before it has its outcome.
  void on_stored(std::uint64_t seq, store::StoreOutcome outcome);
  // A TargetList frame for the agent, written after what is queued. Only while open (Hello
  // accepted, not closing). An unsent list still queued is replaced rather than kept beside it,
  // so a peer that does not read holds at most the list being written and the newest one.
  // True when it replaced one.
  bool send_target_list(std::vector<std::uint8_t> frame);
  // The frame next_write() returned has been written whole.
  void on_written();
  // The timer fired (or any time): closes the session if its deadline has passed.
  void on_tick();
  // Ends the session now, for reasons outside it (peer gone, write error, eviction, shutdown).
  void close() noexcept { phase_ = Phase::kClosed; }

  // What the Hello said for the mesh, once, after it was accepted.
  std::optional<MeshHello> take_mesh_hello() { return std::exchange(mesh_hello_, std::nullopt); }
  // The list version the agent reports running, when its batches changed it since the last call.
  std::optional<std::uint64_t> take_running_list_version() { return std::exchange(running_changed_, std::nullopt); }
  // Batches accepted since the last call, in arrival order.
  std::vector<SessionBatch> take_batches();
  // The frame to write next (stays valid until on_written()), or null.
  const std::vector<std::uint8_t>* next_write() const noexcept {
    return writes_.empty() || closed() ? nullptr : &writes_.front().bytes;
  }
  // Past the handshake, not refused or closing: bytes are welcome.
  bool reading() const noexcept { return phase_ == Phase::kHello || phase_ == Phase::kOpen; }
  // Batches waiting for their outcome (or for an earlier one's) at max_pending_per_connection.
  bool at_pending_limit() const noexcept { return awaiting_.size() >= config_.max_pending_per_connection; }
  // A refusal or RetryLater is queued: the session closes once its writes are done.
  bool closing() const noexcept { return phase_ == Phase::kClosing; }
  bool closed() const noexcept { return phase_ == Phase::kClosed; }
  // Closed because its refusal or RetryLater is written: the agent should get to read it.
  bool answered() const noexcept { return answered_; }
  std::int64_t deadline_ns() const noexcept { return deadline_ns_; }
  std::size_t pending() const noexcept { return awaiting_.size(); }
  std::size_t unsent_bytes() const noexcept { return unsent_bytes_; }
  std::size_t unsent_list_bytes() const noexcept { return unsent_list_bytes_; }
  const std::string& peer() const noexcept { return peer_; }
  const std::string& source() const noexcept { return source_; }
  const std::string& cn() const noexcept { return cn_; }
  const platform::tls::PeerIdentity& identity() const noexcept { return identity_; }

 private:
  enum class Phase {
    kHandshake,  // TLS handshake in progress: the handshake deadline runs
    kHello,      // authenticated, waiting for the Hello
    kOpen,       // Hello accepted: batches welcome
    kClosing,    // refused or told to retry later: closes once its writes are done
    kClosed,
  };
  struct Awaiting {
    std::uint64_t seq = 0;
    std::optional<store::StoreOutcome> outcome;
  };

  bool on_frame(const wire::Frame& frame, std::span<const std::uint8_t> bytes);
  // Counts, logs (escaped) and sends Rejected with `why` for `seq` (0: the session), then closes.
  bool refuse(Reject reason, const std::string& why, std::uint64_t seq = 0);
  void ack(std::uint64_t seq, store::StoreOutcome outcome);
  void send(std::vector<std::uint8_t> frame);
  void send_then_close(std::vector<std::uint8_t> frame);
  void restart_idle_deadline();

  const IngestConfig& config_;
  const SessionClock& clock_;
  SessionTally& tally_;
  std::string peer_;
  std::string source_;
  std::string cn_;  // the certificate's agent id (empty until authenticated, or when it names none)
  platform::tls::PeerIdentity identity_;
  std::string agent_id_, region_, pop_, arch_, version_;
  store::Incarnation incarnation_{};
  wire::FrameReader reader_;
  std::vector<SessionBatch> batches_;
  std::deque<Awaiting> awaiting_;  // batches handed to the store, oldest first
  struct Write {
    std::vector<std::uint8_t> bytes;
    bool target_list = false;
  };
  std::deque<Write> writes_;
  std::size_t unsent_bytes_ = 0;       // acks and refusals in writes_, the one being written included
  std::size_t unsent_list_bytes_ = 0;  // TargetLists in writes_ (at most two)
  std::optional<MeshHello> mesh_hello_;
  std::uint64_t running_list_version_ = 0;
  std::optional<std::uint64_t> running_changed_;
  std::int64_t deadline_ns_ = 0;
  Phase phase_ = Phase::kHandshake;
  bool resumed_ = false;
  bool answered_ = false;
};

}  // namespace vantage::collector
