#include "collector/ingest_server.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <future>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "collector/ingest_session.hpp"
#include "collector/mesh/mesh_planner.hpp"
#include "collector/mesh_sessions.hpp"
#include "collector/store/sqlite_sink.hpp"
#include "platform/clock.hpp"
#include "platform/log.hpp"
#include "platform/tls/tls_error.hpp"
#include "platform/tls/tls_stream.hpp"

#include <mbedtls/ssl.h>
#include "schemas/frame_codec.hpp"

namespace vantage::collector {

namespace {

using platform::log;
using platform::LogLevel;

asio::ip::address plain_address(asio::ip::address address) {
  // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; they are IPv4 sources.
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  }
  return address;
}

std::string endpoint_text(const asio::ip::tcp::endpoint& e) {
  const asio::ip::address address = plain_address(e.address());
  const std::string host = address.to_string();
  return (address.is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(e.port());
}

// The peer closed the TCP connection without a TLS close_notify: an agent that stopped or
// crashed. Normal enough not to log as a failure.
bool peer_closed(const std::error_code& ec) {
  return ec == asio::error::eof ||
         (ec.category() == platform::tls::mbedtls_category() && ec.value() == MBEDTLS_ERR_SSL_CONN_EOF);
}

// Each io thread reads every connection's TLS plaintext into this one buffer and feeds it to
// the connection's frame reader at once, so an idle connection holds no read buffer.
thread_local std::array<std::uint8_t, 16384> t_read_buffer;

// Reads done for one connection before the others on its thread get a turn.
constexpr int kReadsPerTurn = 16;

// How long a refused agent gets to read its answer and close before the collector closes anyway.
constexpr std::chrono::seconds kLingerTime{2};

}  // namespace

// The metrics' reason labels, in the order of Reject.
constexpr const char* kRejectNames[] = {
    "connection_limit", "handshake", "timeout", "no_identity", "identity", "region", "protocol", "frame",
    "store", "handshake_limit", "source_limit", "evicted", "slow_reader", "fd_limit",
    "string_too_long", "invalid_utf8", "control_character",
    "certificate", "region_mismatch", "pop_mismatch", "revoked", "crl_expired", "certificate_expired",
};
static_assert(std::size(kRejectNames) == static_cast<std::size_t>(Reject::kCount), "a name for every Reject");

const char* to_string(Reject reason) noexcept {
  const auto i = static_cast<std::size_t>(reason);
  return i < std::size(kRejectNames) ? kRejectNames[i] : "unknown";
}

class Connection;

struct StoreItem : SessionBatch {
  std::weak_ptr<Connection> connection;
  asio::io_context* io = nullptr;  // the connection's thread, where its outcome goes
};

// Who may start a TLS handshake: the pre-authentication budget, shared by every io thread and
// the acceptors (one mutex: taken once per accept and once per handshake end).
class Admission {
 public:
  struct Entry;
  // A handshake's place in the budget; `released` once it left (ended, or evicted), under the
  // admission mutex, so whichever of the connection and an eviction comes second does nothing.
  struct Ticket {
    std::list<Entry>::iterator entry;
    bool released = false;
    // Since when (CLOCK_MONOTONIC ns) the handshake waits for the peer's bytes; 0 while it waits
    // for this server (queued for CPU, or working). Set by the connection's thread.
    std::atomic<std::int64_t> awaiting_peer_since_ns{0};
  };
  struct Entry {
    std::weak_ptr<Connection> connection;
    asio::io_context* io = nullptr;
    std::string source;
    std::int64_t accepted_ns = 0;
    std::shared_ptr<Ticket> ticket;
  };

  enum class Verdict { kAdmit, kSourceLimit, kHandshakeLimit };
  struct Decision {
    Verdict verdict = Verdict::kAdmit;
    std::shared_ptr<Ticket> ticket;
    std::optional<Entry> evicted;  // the caller closes it on its thread
  };

  Admission(std::size_t max_total, std::size_t max_per_source, std::int64_t evict_after_ns)
      : max_total_(max_total), max_per_source_(max_per_source), evict_after_ns_(evict_after_ns) {}

  Decision admit(const std::string& source, asio::io_context& io, std::int64_t now_ns) {
    std::lock_guard lock(mutex_);
    Decision d;
    const auto count = per_source_.find(source);
    if (count != per_source_.end() && count->second >= max_per_source_) {
      d.verdict = Verdict::kSourceLimit;
      return d;
    }
    if (in_progress_.size() >= max_total_) {
      // Make way only by closing a handshake that has been waiting for its peer for a while (a
      // stalled or trickling peer), oldest first; handshakes that wait for this server's CPU (a
      // reconnect storm) are never thrown away, the newcomer is refused instead.
      auto victim = in_progress_.end();
      for (auto it = in_progress_.begin(); it != in_progress_.end(); ++it) {
        const std::int64_t since = it->ticket->awaiting_peer_since_ns.load(std::memory_order_relaxed);
        if (since != 0 && now_ns - since >= evict_after_ns_) {
          victim = it;
          break;
        }
      }
      if (victim == in_progress_.end()) {
        d.verdict = Verdict::kHandshakeLimit;
        return d;
      }
      d.evicted = *victim;
      release_locked(*victim->ticket);
    }
    ++per_source_[source];
    d.ticket = std::make_shared<Ticket>();
    in_progress_.push_back(Entry{{}, &io, source, now_ns, d.ticket});
    d.ticket->entry = std::prev(in_progress_.end());
    return d;
  }

  void bind(Ticket& ticket, std::weak_ptr<Connection> connection) {
    std::lock_guard lock(mutex_);
    if (!ticket.released) ticket.entry->connection = std::move(connection);
  }

  // The handshake ended or the connection closed. False when it had already left the budget
  // (an eviction took its place).
  bool release(Ticket& ticket) {
    std::lock_guard lock(mutex_);
    if (ticket.released) return false;
    release_locked(ticket);
    return true;
  }

  bool released(const Ticket& ticket) const {
    std::lock_guard lock(mutex_);
    return ticket.released;
  }

 private:
  void release_locked(Ticket& ticket) {
    ticket.released = true;
    const auto found = per_source_.find(ticket.entry->source);
    if (found != per_source_.end() && --found->second == 0) per_source_.erase(found);
    in_progress_.erase(ticket.entry);  // the entry's own shared_ptr to the ticket goes with it
  }

  mutable std::mutex mutex_;
  std::list<Entry> in_progress_;  // oldest first
  std::unordered_map<std::string, std::size_t> per_source_;
  std::size_t max_total_;
  std::size_t max_per_source_;
  std::int64_t evict_after_ns_;
};

// Pre-authentication refusals by source and reason, written as one log line per period. Sources
// beyond a bound are counted as "others", so a host spraying addresses cannot grow it.
class RefusalSummary {
 public:
  static constexpr std::size_t kMaxSources = 4096;

  void add(const std::string& source, Reject reason) {
    std::lock_guard lock(mutex_);
    ++by_reason_[static_cast<std::size_t>(reason)];
    ++total_;
    auto found = by_source_.find(source);
    if (found == by_source_.end()) {
      if (by_source_.size() >= kMaxSources) {
        ++others_;
        return;
      }
      found = by_source_.emplace(source, 0).first;
    }
    ++found->second;
  }

  // The line for the period now ending, or empty when there was nothing; starts a new period.
  std::string take(std::int64_t now_ns) {
    std::lock_guard lock(mutex_);
    const std::int64_t started_ns = std::exchange(period_start_ns_, now_ns);
    if (total_ == 0) return {};
    const std::int64_t seconds = std::max<std::int64_t>(1, (now_ns - started_ns + 500'000'000) / 1'000'000'000);
    std::string line = "pre-authentication refusals in the last " + std::to_string(seconds) +
                       " s: " + std::to_string(total_) + " (";
    bool first = true;
    for (std::size_t i = 0; i < by_reason_.size(); ++i) {
      if (by_reason_[i] == 0) continue;
      line += (first ? "" : ", ") + std::string(to_string(static_cast<Reject>(i))) + " " +
              std::to_string(by_reason_[i]);
      first = false;
    }
    std::vector<std::pair<std::uint64_t, const std::string*>> top;
    top.reserve(by_source_.size());
    for (const auto& [source, n] : by_source_) top.emplace_back(n, &source);
    const std::size_t shown = std::min<std::size_t>(top.size(), 5);
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(shown), top.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first; });
    line += ") from " + std::to_string(by_source_.size() + (others_ > 0 ? 1 : 0)) + " source(s); most from";
    for (std::size_t i = 0; i < shown; ++i) {
      line += (i == 0 ? " " : ", ") + *top[i].second + " (" + std::to_string(top[i].first) + ")";
    }
    if (others_ > 0) line += ", untracked sources (" + std::to_string(others_) + ")";
    by_source_.clear();
    by_reason_.fill(0);
    total_ = 0;
    others_ = 0;
    return line;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::uint64_t> by_source_;
  std::array<std::uint64_t, static_cast<std::size_t>(Reject::kCount)> by_reason_{};
  std::uint64_t total_ = 0;
  std::uint64_t others_ = 0;
  std::int64_t period_start_ns_ = platform::monotonic_ns();
};

struct IoThread {
  asio::io_context io{1};  // one thread runs it: no locking inside Asio's scheduler
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
};

struct IngestServer::Impl final : SessionTally {
  explicit Impl(IngestConfig c)
      : config(std::move(c)),
        admission(config.max_handshakes, config.max_handshakes_per_source,
                  std::chrono::duration_cast<std::chrono::nanoseconds>(config.evict_after).count()) {}

  IngestConfig config;
  std::vector<std::unique_ptr<IoThread>> threads;  // [0] also runs the acceptors and timers
  std::size_t next_thread = 0;
  // The TLS material new handshakes use; a reload replaces it, and the connections made with the
  // old one keep it alive (each TlsStream holds its context).
  std::shared_ptr<platform::tls::TlsContext> tls;
  mutable std::mutex tls_mutex;
  std::shared_ptr<platform::tls::TlsContext> current_tls() const {
    std::lock_guard lock(tls_mutex);
    return tls;
  }
  // Authenticated connections and their io threads, so a reload can find the sessions its CRL
  // revokes.
  // Each with its certificate's notAfter (0: no valid identity), for the earliest-expiry metric
  // and the sweep that closes sessions whose certificate expired.
  struct LiveSession {
    std::weak_ptr<Connection> connection;
    asio::io_context* io = nullptr;
    std::int64_t not_after_s = 0;
  };
  std::mutex sessions_mutex;
  std::unordered_map<const Connection*, LiveSession> sessions;
  // Serials of revoked certificates presented since the last refusal summary, each logged once
  // per period (bounded: past the bound, only the summary counts them). A CRL check runs before
  // the client proves it holds the key, so anyone with a copy of a certificate can present it.
  static constexpr std::size_t kMaxPresentedSerials = 256;
  std::mutex presented_mutex;
  std::unordered_set<std::string> presented_revoked;
  bool first_presentation(const std::string& serial) {
    std::lock_guard lock(presented_mutex);
    if (presented_revoked.size() >= kMaxPresentedSerials) return false;
    return presented_revoked.insert(serial).second;
  }
  // CLOCK_MONOTONIC ns of the last warning that the CRL is past its nextUpdate (0: none yet).
  std::atomic<std::int64_t> crl_expired_warned_ns{0};
  void sweep_expired_sessions();
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors;
  std::unique_ptr<asio::steady_timer> summary_timer;
  std::thread store_thread;
  std::shared_ptr<store::BatchSink> sink;
  Admission admission;
  RefusalSummary refusals;
  std::string pause_file;  // test seam: while this file exists the store thread holds off
  // The mesh, when configured: its own thread owns the planner.
  std::unique_ptr<MeshSessions> mesh;
  std::atomic<std::uint64_t> next_connection_id{1};

  std::mutex queue_mutex;
  std::condition_variable queue_cv;
  std::vector<StoreItem> queue;
  std::size_t queue_bytes = 0;  // queued or being stored, under queue_mutex
  std::size_t queue_peak_bytes = 0;
  // Connections that stopped reading because the queue was full, resumed when it drains.
  std::vector<std::pair<std::weak_ptr<Connection>, asio::io_context*>> parked;
  bool stopping = false;
  std::int64_t last_commit_end_ns = 0;  // CLOCK_MONOTONIC, under queue_mutex

  mutable std::mutex counters_mutex;
  IngestCounters counters;

  asio::io_context& io0() { return threads.front()->io; }

  void count(Reject reason) override {
    std::lock_guard lock(counters_mutex);
    ++counters.rejects[static_cast<std::size_t>(reason)];
  }
  // A refusal before the peer proved who it is: counted, and in the periodic summary only.
  void refuse_pre_auth(const std::string& source, Reject reason) override {
    count(reason);
    refusals.add(source, reason);
  }
  void count_frame() override {
    update([](IngestCounters& c) { ++c.frames; });
  }
  void count_ack(bool duplicate) override {
    update([duplicate](IngestCounters& c) {
      ++(duplicate ? c.batches_duplicate : c.batches_stored);
      ++c.acks_sent;
    });
  }
  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(counters_mutex);
    f(counters);
  }

  void accept(asio::ip::tcp::acceptor& acceptor);
  void on_accepted(asio::ip::tcp::socket socket, asio::io_context& io);
  void arm_summary();
  void enqueue(StoreItem item);
  bool queue_full();
  void park(std::weak_ptr<Connection> connection, asio::io_context& io);
  void run_store();
  void wait_while_paused();
};

// One agent connection, on its io thread only: the I/O around its IngestSession (TLS, the read
// loop and its pauses, writes, the timer, the admission ticket). Pending operations and queued
// store items keep it alive or (store items) find it gone.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(IngestServer::Impl& server, asio::io_context& io,
             std::shared_ptr<platform::tls::TlsStream> stream, std::string peer, std::string source,
             std::shared_ptr<Admission::Ticket> ticket)
      : server_(server),
        io_(io),
        stream_(std::move(stream)),
        timer_(io),
        ticket_(std::move(ticket)),
        id_(server.next_connection_id.fetch_add(1, std::memory_order_relaxed)),
        session_(server.config, system_session_clock(), server, std::move(peer), std::move(source)) {}

  void start() {
    if (server_.admission.released(*ticket_)) {
      close();  // evicted before it started
      return;
    }
    // The ticket outlives this connection's handlers (shared), so the observer may write to it.
    stream_->set_handshake_observer([ticket = ticket_](bool waiting) {
      ticket->awaiting_peer_since_ns.store(waiting ? std::max<std::int64_t>(platform::monotonic_ns(), 1) : 0,
                                           std::memory_order_relaxed);
    });
    sync_timer();
    stream_->async_handshake([self = shared_from_this()](std::error_code ec) { self->on_handshake(ec); });
  }

  ~Connection() {
    leave_mesh();
    unregister();
    server_.admission.release(*ticket_);
    server_.update([this](IngestCounters& c) {
      --c.connections_open;
      if (!handshake_done_) --c.handshakes_in_progress;
      if (session_counted_) --c.sessions_open;
    });
  }

  // The admission budget gave this handshake's place to a newer connection (counted there).
  void evict() {
    if (closed_ || handshake_done_) return;
    log(LogLevel::kDebug, "%s: evicted by a newer connection during the TLS handshake", session_.peer().c_str());
    close();
  }

  // From the store thread's results, on the io thread.
  void on_stored(std::uint64_t seq, store::StoreOutcome outcome) {
    if (closed_) {
      return;
    }
    session_.on_stored(seq, outcome);
    apply();
    resume();
  }

  // After a reload, on this connection's thread: closes the session if `tls` revokes it.
  void check_revoked(const platform::tls::TlsContext& tls) {
    if (closed_ || !session_.reading() || !tls.is_revoked(session_.identity())) return;
    session_.revoke();
    apply();
  }

  // From the periodic sweep, on this connection's thread: closes the session if its
  // certificate's notAfter has passed.
  void check_expired(std::int64_t now_s) {
    if (closed_ || !session_.reading()) return;
    const std::int64_t not_after = session_.identity().not_after_s;
    if (not_after == 0 || not_after > now_s) return;
    session_.expire();
    apply();
  }

  // From the mesh thread, on this connection's thread: the agent's newest target list.
  void send_target_list(std::vector<std::uint8_t> frame) {
    if (closed_) return;
    if (session_.send_target_list(std::move(frame)) && server_.mesh) server_.mesh->count_replaced();
    apply();
  }

  // Reading resumes if nothing holds it back (pending acks, the store queue).
  void resume() {
    if (closed_ || read_state_ != ReadState::kStopped || !session_.reading()) return;
    if (session_.at_pending_limit()) return;
    read_state_ = ReadState::kPosted;
    hold_.reset();  // the posted task owns it now
    asio::post(io_, [self = shared_from_this()] { self->read_loop(); });
  }

 private:
  enum class ReadState { kStopped, kWaiting, kPosted };

  // Carries out what the session decided: batches to the store queue (those accepted before a
  // bad frame too), acks to the socket, the close, the timer.
  void apply() {
    for (SessionBatch& batch : session_.take_batches()) {
      StoreItem item;
      static_cast<SessionBatch&>(item) = std::move(batch);
      item.connection = weak_from_this();
      item.io = &io_;
      server_.enqueue(std::move(item));
    }
    if (server_.mesh) tell_mesh();
    if (session_.closed()) {
      close(session_.answered() ? Ending::kLinger : Ending::kNow);
      return;
    }
    write_next();
    sync_timer();
  }

  // The timer waits for the session's deadline. A frame moves the idle deadline later without
  // touching the timer: when it fires early the session says so and it waits again. Only a
  // deadline earlier than the one waited for re-arms it.
  void sync_timer() {
    if (closed_) return;
    const std::int64_t deadline = session_.deadline_ns();
    if (timer_deadline_ns_ != 0 && timer_deadline_ns_ <= deadline) return;
    timer_deadline_ns_ = deadline;
    timer_.expires_after(std::chrono::nanoseconds(std::max<std::int64_t>(0, deadline - platform::monotonic_ns())));
    timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->closed_) {
        return;
      }
      self->timer_deadline_ns_ = 0;
      self->session_.on_tick();
      self->apply();
    });
  }

  void on_handshake(std::error_code ec) {
    if (closed_) {
      return;
    }
    if (!server_.admission.release(*ticket_)) {
      close();  // evicted meanwhile
      return;
    }
    const platform::tls::PeerIdentity& identity = stream_->peer_identity();
    if (!identity.ticket_refused.empty()) {
      // Debug only: a ticket travels in clear and can be replayed by anyone who saw it, so this
      // line would let an unauthenticated peer make the log speak of a real agent.
      log(LogLevel::kDebug, "%s: %s; a full handshake follows", session_.source().c_str(),
          identity.ticket_refused.c_str());
    }
    if (ec) {
      const std::uint32_t flags = stream_->peer_verify_flags();
      if ((flags & MBEDTLS_X509_BADCERT_REVOKED) != 0) {
        // The CRL is checked before the client proves it holds the key: whoever has a copy of a
        // revoked certificate can present it. So the line says "presented", and comes once per
        // serial per summary period; every attempt is counted in the refusal summary.
        if (server_.first_presentation(identity.serial)) {
          log(LogLevel::kWarning,
              "%s: a client presented the certificate of agent '%s' (serial %s), which the CRL revokes; refused "
              "(repeats are counted in the refusal summary)",
              session_.source().c_str(), identity.agent_id.c_str(), identity.serial_hex().c_str());
        }
        session_.on_handshake_failed(ec.message(), Reject::kRevoked);
      } else if ((flags & MBEDTLS_X509_BADCRL_EXPIRED) != 0) {
        // Not the agent's fault: the loaded CRL is past its nextUpdate and mbedTLS fails every
        // full handshake against it. One warning a minute, and its own reason in the counters.
        const std::int64_t now = platform::monotonic_ns();
        std::int64_t last = server_.crl_expired_warned_ns.load(std::memory_order_relaxed);
        if ((last == 0 || now - last >= 60'000'000'000) &&
            server_.crl_expired_warned_ns.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
          log(LogLevel::kWarning,
              "the CRL (tls.crl) is past its nextUpdate: every full TLS handshake fails until a fresh CRL is "
              "loaded (systemctl reload)");
        }
        session_.on_handshake_failed(ec.message(), Reject::kCrlExpired);
      } else {
        session_.on_handshake_failed(ec.message());
      }
      apply();
      return;
    }
    handshake_done_ = true;
    bool full = false;
    server_.update([&](IngestCounters& c) {
      --c.handshakes_in_progress;
      ++c.handshakes;
      if (stream_->resumed()) ++c.resumed_handshakes;
      full = c.sessions_open >= server_.config.max_sessions;
      if (!full) {
        ++c.sessions_open;
        session_counted_ = true;
      }
    });
    session_.on_authenticated(identity, stream_->resumed(), !full);
    if (session_.reading()) {
      {
        std::lock_guard lock(server_.sessions_mutex);
        server_.sessions.emplace(
            this, IngestServer::Impl::LiveSession{weak_from_this(), &io_, identity.valid() ? identity.not_after_s : 0});
        registered_ = true;
      }
      // A reload may have revoked it while this handshake ran against the previous CRL (the
      // reload's sweep only sees registered sessions).
      if (server_.current_tls()->is_revoked(identity)) session_.revoke();
    }
    apply();
    if (session_.reading()) read_loop();
  }


  void wait_readable() {
    read_state_ = ReadState::kWaiting;
    stream_->async_wait_read([self = shared_from_this()](std::error_code ec) {
      self->read_state_ = ReadState::kStopped;
      if (self->closed_) return;
      if (ec) return self->on_read_error(ec);
      self->read_loop();
    });
  }

  void read_loop() {
    read_state_ = ReadState::kStopped;
    if (closed_) return;
    for (int turn = 0; turn < kReadsPerTurn; ++turn) {
      // Refused: the session closes once its answer is written, and reads nothing more.
      if (!session_.reading()) return;
      // While reading is paused no operation is pending on the stream: hold_ keeps the
      // connection alive until resume() or close().
      if (session_.at_pending_limit()) {
        hold_ = shared_from_this();
        return;  // resumed by on_stored()
      }
      if (server_.queue_full()) {
        hold_ = shared_from_this();
        server_.park(weak_from_this(), io_);
        return;
      }
      std::error_code ec;
      const std::size_t n = stream_->read_available(asio::buffer(t_read_buffer), ec);
      if (ec == asio::error::would_block) return wait_readable();
      if (ec) return on_read_error(ec);
      session_.on_bytes({t_read_buffer.data(), n});
      apply();
    }
    // Others on this thread get a turn before this connection reads again.
    read_state_ = ReadState::kPosted;
    asio::post(io_, [self = shared_from_this()] { self->read_loop(); });
  }

  void on_read_error(std::error_code ec) {
    if (peer_closed(ec)) {
      log(LogLevel::kDebug, "%s (%s): closed by the agent", session_.peer().c_str(),
          platform::escape_for_log(session_.cn()).c_str());
    } else {
      log(LogLevel::kInfo, "%s (%s): connection ended: %s", session_.peer().c_str(),
          platform::escape_for_log(session_.cn()).c_str(),
          ec.message().c_str());
    }
    close();
  }

  // One write at a time, in the session's order.
  void write_next() {
    const std::vector<std::uint8_t>* front = session_.next_write();
    if (writing_ || closed_ || front == nullptr) return;
    writing_ = true;
    stream_->async_write(asio::buffer(*front), [self = shared_from_this()](std::error_code ec, std::size_t) {
      self->writing_ = false;
      if (self->closed_) {
        return;
      }
      if (ec) {
        self->close();
        return;
      }
      self->session_.on_written();
      self->apply();
    });
  }

  // The Hello's reflectors and list version, and the version the batches report running, to the
  // mesh thread: nothing here waits for the planner.
  void tell_mesh() {
    if (std::optional<MeshHello> hello = session_.take_mesh_hello()) {
      const platform::tls::PeerIdentity& identity = session_.identity();
      mesh_agent_ = identity.agent_id;
      server_.mesh->hello(identity.agent_id, identity.region, identity.pop, std::move(*hello), id_,
                          [weak = weak_from_this(), io = &io_](std::vector<std::uint8_t> frame, std::uint64_t) {
                            asio::post(*io, [weak, frame = std::move(frame)]() mutable {
                              if (auto connection = weak.lock()) connection->send_target_list(std::move(frame));
                            });
                          });
    }
    if (const auto running = session_.take_running_list_version(); running && !mesh_agent_.empty()) {
      server_.mesh->running(mesh_agent_, id_, *running);
    }
  }

  // The agent's session ended: the mesh starts its forget_after.
  void leave_mesh() {
    if (mesh_agent_.empty() || !server_.mesh) return;
    server_.mesh->gone(std::exchange(mesh_agent_, {}), id_);
  }

  void unregister() {
    if (!registered_) return;
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.erase(this);
    registered_ = false;
  }

  // kLinger: the session's last answer (a refusal, RetryLater) is written, and the agent should
  // read it before the connection goes: it is closed once the agent closes its side, at most
  // kLingerTime later. The connection stays counted meanwhile, but no longer holds a session.
  enum class Ending { kNow, kLinger };

  void close(Ending ending = Ending::kNow) {
    if (closed_) {
      return;
    }
    closed_ = true;
    leave_mesh();
    unregister();  // a lingering connection is no session: reloads, sweeps and the expiry gauge skip it
    session_.close();
    server_.admission.release(*ticket_);
    timer_.cancel();
    if (ending == Ending::kLinger) {
      if (session_counted_) {
        server_.update([](IngestCounters& c) { --c.sessions_open; });
        session_counted_ = false;
      }
      timer_.expires_after(kLingerTime);
      timer_.async_wait([self = shared_from_this()](std::error_code ec) {
        if (!ec) self->stream_->close();
      });
      stream_->async_linger([self = shared_from_this()](std::error_code) { self->timer_.cancel(); });
    } else {
      stream_->close();
    }
    if (hold_) asio::post(io_, [held = std::move(hold_)] {});  // not from inside a member call
  }

  IngestServer::Impl& server_;
  asio::io_context& io_;
  std::shared_ptr<platform::tls::TlsStream> stream_;
  asio::steady_timer timer_;
  std::int64_t timer_deadline_ns_ = 0;  // what timer_ waits for; 0: nothing
  std::shared_ptr<Admission::Ticket> ticket_;
  const std::uint64_t id_;  // tells this connection's mesh events from an older or newer one's
  std::string mesh_agent_;  // the agent id once the mesh has its Hello, until it left
  std::shared_ptr<Connection> hold_;  // self, while reading is paused
  IngestSession session_;
  ReadState read_state_ = ReadState::kStopped;
  bool handshake_done_ = false;
  bool session_counted_ = false;
  bool registered_ = false;  // in server_.sessions
  bool writing_ = false;
  bool closed_ = false;
};

void IngestServer::Impl::accept(asio::ip::tcp::acceptor& acceptor) {
  // Each connection is accepted straight onto the io thread that will own it.
  asio::io_context& target = threads[next_thread]->io;
  next_thread = (next_thread + 1) % threads.size();
  acceptor.async_accept(target, [this, &acceptor, &target](std::error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) {
      return;
    }
    if (!ec) {
      on_accepted(std::move(socket), target);
      accept(acceptor);
      return;
    }
    // EMFILE and friends: the pending connection stays in the kernel's queue, so accepting again
    // at once would spin. Pause briefly; others closing frees descriptors meanwhile.
    refuse_pre_auth("(accept)", Reject::kFdLimit);
    auto timer = std::make_shared<asio::steady_timer>(io0(), std::chrono::milliseconds(100));
    timer->async_wait([this, &acceptor, timer](std::error_code wait_ec) {
      if (!wait_ec && acceptor.is_open()) accept(acceptor);
    });
  });
}

void IngestServer::Impl::on_accepted(asio::ip::tcp::socket socket, asio::io_context& io) {
  std::error_code peer_ec;
  const auto remote = socket.remote_endpoint(peer_ec);
  if (peer_ec) return;  // already gone
  const std::string peer = endpoint_text(remote);
  const std::string source = plain_address(remote.address()).to_string();
  Admission::Decision decision = admission.admit(source, io, platform::monotonic_ns());
  if (decision.verdict != Admission::Verdict::kAdmit) {
    refuse_pre_auth(source,
                    decision.verdict == Admission::Verdict::kSourceLimit ? Reject::kSourceLimit : Reject::kHandshakeLimit);
    std::error_code ignored;
    socket.set_option(asio::socket_base::linger(true, 0), ignored);  // RST: no TIME_WAIT for refusals
    socket.close(ignored);
    return;
  }
  if (decision.evicted) {
    refuse_pre_auth(decision.evicted->source, Reject::kEvicted);
    asio::post(*decision.evicted->io, [weak = decision.evicted->connection] {
      if (auto victim = weak.lock()) victim->evict();
    });
  }
  update([](IngestCounters& c) {
    ++c.connections_accepted;
    ++c.connections_open;
    ++c.handshakes_in_progress;
  });
  // The collector only writes acks and its handshake: a small send buffer bounds what the kernel
  // holds for a peer that stops reading (autotuning would let it grow to megabytes).
  std::error_code ignored;
  socket.set_option(asio::socket_base::send_buffer_size(32 * 1024), ignored);
  // The socket already belongs to `io`; the connection starts there.
  asio::post(io, [this, &io, socket = std::move(socket), peer, source, ticket = decision.ticket]() mutable {
    auto connection = std::make_shared<Connection>(
        *this, io, platform::tls::TlsStream::create(std::move(socket), current_tls()), peer, source, ticket);
    admission.bind(*ticket, connection);
    connection->start();
  });
}

void IngestServer::Impl::arm_summary() {
  summary_timer->expires_after(config.refusal_summary_period);
  summary_timer->async_wait([this](std::error_code ec) {
    if (ec) return;
    const std::string line = refusals.take(platform::monotonic_ns());
    if (!line.empty()) log(LogLevel::kNotice, "%s", line.c_str());
    {
      std::lock_guard lock(presented_mutex);
      presented_revoked.clear();  // a revoked certificate presented again gets its line again
    }
    sweep_expired_sessions();
    arm_summary();
  });
}

// Closes, each on its own thread, the sessions whose certificate's notAfter has passed: run with
// the refusal summary, so an expired certificate keeps its session at most one period longer.
void IngestServer::Impl::sweep_expired_sessions() {
  const auto now = static_cast<std::int64_t>(std::time(nullptr));
  std::vector<std::pair<std::weak_ptr<Connection>, asio::io_context*>> expired;
  {
    std::lock_guard lock(sessions_mutex);
    for (const auto& [key, live] : sessions) {
      if (live.not_after_s != 0 && live.not_after_s <= now) expired.emplace_back(live.connection, live.io);
    }
  }
  for (auto& [weak, io] : expired) {
    asio::post(*io, [weak = std::move(weak), now] {
      if (auto connection = weak.lock()) connection->check_expired(now);
    });
  }
}

void IngestServer::Impl::enqueue(StoreItem item) {
  {
    std::lock_guard lock(queue_mutex);
    queue_bytes += item.frame.size();
    queue_peak_bytes = std::max(queue_peak_bytes, queue_bytes);
    queue.push_back(std::move(item));
  }
  queue_cv.notify_one();
}

bool IngestServer::Impl::queue_full() {
  std::lock_guard lock(queue_mutex);
  return queue_bytes >= config.store_queue_bytes;
}

void IngestServer::Impl::park(std::weak_ptr<Connection> connection, asio::io_context& io) {
  {
    std::lock_guard lock(queue_mutex);
    if (queue_bytes < config.store_queue_bytes) {
      // Drained since the caller looked: resume at once instead.
      asio::post(io, [weak = std::move(connection)] {
        if (auto c = weak.lock()) c->resume();
      });
      return;
    }
    parked.emplace_back(std::move(connection), &io);
  }
  update([](IngestCounters& c) { ++c.read_pauses; });
}

void IngestServer::Impl::wait_while_paused() {
  if (pause_file.empty()) return;
  while (::access(pause_file.c_str(), F_OK) == 0) {
    {
      std::lock_guard lock(queue_mutex);
      if (stopping) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void IngestServer::Impl::run_store() {
  std::vector<StoreItem> items;
  for (;;) {
    {
      std::unique_lock lock(queue_mutex);
      queue_cv.wait(lock, [this] { return stopping || !queue.empty(); });
      if (queue.empty() && stopping) {
        return;
      }
    }
    wait_while_paused();
    std::size_t bytes = 0;
    {
      std::lock_guard lock(queue_mutex);
      items.swap(queue);
    }
    for (const StoreItem& item : items) bytes += item.frame.size();
    // Everything queued since the last commit goes into one transaction: one fsync for all.
    std::vector<store::IncomingBatch> batches;
    batches.reserve(items.size());
    for (const StoreItem& item : items) {
      store::IncomingBatch in;
      in.batch = wire::GetFrame(item.frame.data())->message_as_Batch();
      in.agent_id = item.agent_id;
      in.region = item.region;
      in.pop = item.pop;
      in.arch = item.arch;
      in.software_version = item.software_version;
      in.incarnation = item.incarnation;
      in.received_ns = item.received_ns;
      in.frame = item.frame;
      batches.push_back(in);
    }
    const std::int64_t started_ns = platform::monotonic_ns();
    auto result = sink->store(batches);
    const std::int64_t ended_ns = platform::monotonic_ns();
    if (!result) {
      // Store errors may quote stored strings (agent ids from an older, unchecked store).
      log(LogLevel::kError, "store: %s", platform::escape_for_log(result.error(), 512).c_str());
    } else if (result->size() != batches.size()) {
      log(LogLevel::kError, "store: the %s sink answered %zu outcomes for %zu batches", sink->name(),
          result->size(), batches.size());
      result = platform::Status::error("outcome count mismatch", platform::Errc::kInternal);
    }
    std::vector<store::StoreOutcome> outcomes =
        result ? std::move(*result)
               : std::vector<store::StoreOutcome>(items.size(), store::StoreOutcome::kFailed);
    if (config.on_stored) {
      for (std::size_t i = 0; i < batches.size(); ++i) {
        if (outcomes[i] == store::StoreOutcome::kStored) config.on_stored(batches[i]);
      }
    }
    const std::int64_t commit_ns = sink->last_commit_ns().value_or(ended_ns - started_ns);
    const double seconds = static_cast<double>(ended_ns - started_ns) / 1e9;
    const std::size_t failed =
        static_cast<std::size_t>(std::count(outcomes.begin(), outcomes.end(), store::StoreOutcome::kFailed));
    update([&](IngestCounters& c) {
      ++c.commits;
      c.last_commit_ns = commit_ns;
      c.rejects[static_cast<std::size_t>(Reject::kStore)] += failed;
      c.batches_failed += failed;
      const auto* bound =
          std::lower_bound(std::begin(kSinkLatencyBounds), std::end(kSinkLatencyBounds), seconds);
      ++c.sink_latency_buckets[static_cast<std::size_t>(bound - std::begin(kSinkLatencyBounds))];
      c.sink_latency_sum_s += seconds;
    });
    // Outcomes go back to each connection's own thread, one task per thread.
    std::unordered_map<asio::io_context*, std::vector<std::pair<std::weak_ptr<Connection>, std::pair<std::uint64_t, store::StoreOutcome>>>>
        by_thread;
    for (std::size_t i = 0; i < items.size(); ++i) {
      by_thread[items[i].io].emplace_back(std::move(items[i].connection), std::make_pair(items[i].seq, outcomes[i]));
    }
    for (auto& [io, results] : by_thread) {
      asio::post(*io, [results = std::move(results)]() {
        for (const auto& [weak, outcome] : results) {
          if (auto connection = weak.lock()) connection->on_stored(outcome.first, outcome.second);
        }
      });
    }
    items = {};
    batches = {};
    // The frames are freed: make room, and wake the connections that stopped reading.
    std::vector<std::pair<std::weak_ptr<Connection>, asio::io_context*>> wake;
    {
      std::lock_guard lock(queue_mutex);
      queue_bytes -= bytes;
      last_commit_end_ns = ended_ns;
      if (queue_bytes < config.store_queue_bytes) wake.swap(parked);
    }
    for (auto& [weak, io] : wake) {
      asio::post(*io, [weak = std::move(weak)] {
        if (auto c = weak.lock()) c->resume();
      });
    }
  }
}

IngestServer::IngestServer(IngestConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

IngestServer::~IngestServer() { stop(); }

namespace {

// Raises the open-file limit to what the session caps need (sessions, handshakes, the store and
// listeners); where the hard limit is lower and cannot be raised, returns how many sessions fit.
std::size_t fit_file_limit(std::size_t sessions, std::size_t handshakes) {
  constexpr std::size_t kReserve = 64;  // store, logs, listeners, HTTP
  const rlim_t wanted = static_cast<rlim_t>(sessions + handshakes + kReserve);
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return sessions;
  if (limit.rlim_cur >= wanted) return sessions;
  rlimit raised = limit;
  raised.rlim_cur = wanted;
  if (raised.rlim_max < wanted) raised.rlim_max = wanted;  // works with CAP_SYS_RESOURCE
  if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    raised.rlim_max = limit.rlim_max;
    raised.rlim_cur = limit.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &raised);
  }
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= wanted) return sessions;
  const std::size_t have = static_cast<std::size_t>(limit.rlim_cur);
  return have > handshakes + kReserve ? have - handshakes - kReserve : 1;
}

}  // namespace

platform::Status IngestServer::start() {
  Impl& s = *impl_;
  if (s.config.regions.empty()) {
    return platform::Status::error("no region to serve: a collector serves at least one region");
  }
  if (s.config.listen.empty()) {
    return platform::Status::error("no listen address");
  }
  const std::size_t fits = fit_file_limit(s.config.max_sessions, s.config.max_handshakes);
  if (fits < s.config.max_sessions) {
    log(LogLevel::kWarning,
        "the open-file limit fits %zu sessions, not %zu: the session cap is lowered to %zu (raise LimitNOFILE)",
        fits, s.config.max_sessions, fits);
    s.config.max_sessions = fits;
  }
  platform::tls::TlsContextOptions tls = s.config.tls;
  tls.role = platform::tls::TlsRole::kServer;
  auto context = platform::tls::TlsContext::create(tls);
  if (!context) {
    return context.status();
  }
  {
    std::lock_guard lock(s.tls_mutex);
    s.tls = std::move(context).value();
  }

  if (s.config.sink) {
    s.sink = s.config.sink;
  } else {
    auto opened = store::open_sqlite_sink(s.config.database, s.config.retention_days);
    if (!opened) {
      return opened.status();
    }
    s.sink = std::move(*opened);
  }
  if (const char* pause = std::getenv("VANTAGE_COLLECTOR_STORE_PAUSE_FILE")) s.pause_file = pause;

  std::size_t io_threads = s.config.io_threads;
  if (io_threads == 0) io_threads = std::max(1u, std::thread::hardware_concurrency());
  for (std::size_t i = 0; i < io_threads; ++i) s.threads.push_back(std::make_unique<IoThread>());

  for (const asio::ip::tcp::endpoint& endpoint : s.config.listen) {
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(s.io0());
    std::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec && endpoint.address().is_v6() && endpoint.address().is_unspecified()) {
      acceptor->set_option(asio::ip::v6_only(false), ec);
    }
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      s.acceptors.clear();
      s.threads.clear();
      return platform::Status::error("listen on " + endpoint_text(endpoint) + ": " + ec.message(), platform::Errc::kIo);
    }
    s.acceptors.push_back(std::move(acceptor));
  }
  for (auto& acceptor : s.acceptors) {
    s.accept(*acceptor);
  }
  s.summary_timer = std::make_unique<asio::steady_timer>(s.io0());
  s.arm_summary();
  if (s.config.mesh_rules && !s.config.mesh_rules->empty()) {
    // Versions start at the wall clock in ms times 1024: a restarted collector never reuses one an
    // agent holds (a reconnect storm of 10,000 agents spends millions of versions: seconds at 1024
    // a ms, where it would be most of an hour at one a ms), and they stay below 2^53, exact in
    // /metrics and JSON.
    s.mesh = std::make_unique<MeshSessions>(s.config.mesh_rules, s.config.mesh_forget_after,
                                            static_cast<std::uint64_t>(platform::realtime_ns() / 1'000'000) << 10);
    s.mesh->start();
  }
  s.store_thread = std::thread([&s] { s.run_store(); });
  for (auto& t : s.threads) {
    t->thread = std::thread([io = &t->io] { io->run(); });
  }
  return platform::Status();
}

void IngestServer::stop() {
  Impl& s = *impl_;
  if (s.threads.empty() || !s.threads.front()->thread.joinable()) {
    return;
  }
  // Batches already queued are committed (their agents will get no ack and resend: harmless,
  // the store dedupes), then the io threads stop with every connection.
  {
    std::lock_guard lock(s.queue_mutex);
    s.stopping = true;
  }
  s.queue_cv.notify_one();
  s.store_thread.join();
  for (auto& t : s.threads) t->io.stop();
  for (auto& t : s.threads) t->thread.join();
  // The mesh thread posts to the io threads' contexts: it ends before they are destroyed.
  if (s.mesh) s.mesh->stop();
  // The summary of what was refused since the last period is not lost at shutdown.
  if (const std::string line = s.refusals.take(platform::monotonic_ns()); !line.empty()) {
    log(LogLevel::kNotice, "%s", line.c_str());
  }
  s.summary_timer.reset();
  s.acceptors.clear();
  // Connections still owned by handlers die with their io_contexts; the Impl outlives them.
  s.threads.clear();
}

platform::Status IngestServer::reload_tls() {
  Impl& s = *impl_;
  const auto current = s.current_tls();
  if (!current) return platform::Status::error("TLS reload before start");
  platform::tls::TlsContextOptions options = s.config.tls;
  options.role = platform::tls::TlsRole::kServer;
  auto reloaded = current->reload(options);
  if (!reloaded) {
    s.update([](IngestCounters& c) { ++c.tls_reload_failures; });
    return platform::Status::error("TLS reload failed, the previous certificate, key, CA and CRL stay in use: " +
                                   reloaded.error());
  }
  std::shared_ptr<platform::tls::TlsContext> fresh = std::move(reloaded).value();
  {
    std::lock_guard lock(s.tls_mutex);
    s.tls = fresh;
  }
  s.update([](IngestCounters& c) { ++c.tls_reloads; });
  {
    // Under the new CRL, a revoked certificate still being presented is worth one line again.
    std::lock_guard lock(s.presented_mutex);
    s.presented_revoked.clear();
  }
  // Established sessions keep the configuration they were made with (their streams hold it);
  // only those whose certificate the new CRL revokes are closed, each on its own thread.
  std::vector<std::pair<std::weak_ptr<Connection>, asio::io_context*>> sessions;
  {
    std::lock_guard lock(s.sessions_mutex);
    sessions.reserve(s.sessions.size());
    for (const auto& entry : s.sessions) sessions.emplace_back(entry.second.connection, entry.second.io);
  }
  for (auto& [weak, io] : sessions) {
    asio::post(*io, [weak = std::move(weak), fresh] {
      if (auto connection = weak.lock()) connection->check_revoked(*fresh);
    });
  }
  return platform::Status();
}

const char* IngestServer::sink_name() const noexcept { return impl_->sink ? impl_->sink->name() : ""; }

std::vector<asio::ip::tcp::endpoint> IngestServer::local_endpoints() const {
  std::vector<asio::ip::tcp::endpoint> out;
  for (const auto& acceptor : impl_->acceptors) {
    std::error_code ec;
    out.push_back(acceptor->local_endpoint(ec));
  }
  return out;
}

bool IngestServer::healthy() const {
  Impl& s = *impl_;
  if (s.threads.empty() || !s.threads.front()->thread.joinable()) {
    return false;
  }
  std::vector<std::future<void>> answers;
  for (auto& t : s.threads) {
    auto answered = std::make_shared<std::promise<void>>();
    answers.push_back(answered->get_future());
    asio::post(t->io, [answered] { answered->set_value(); });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (auto& answer : answers) {
    if (answer.wait_until(deadline) != std::future_status::ready) return false;
  }
  std::lock_guard lock(s.queue_mutex);
  return s.queue.empty() || platform::monotonic_ns() - s.last_commit_end_ns < 30'000'000'000;
}

IngestCounters IngestServer::counters() const {
  Impl& s = *impl_;
  IngestCounters c;
  {
    std::lock_guard lock(s.counters_mutex);
    c = s.counters;
  }
  {
    // The earliest certificate expiry among the sessions open now: it goes back up when the
    // agent that held it leaves.
    std::lock_guard lock(s.sessions_mutex);
    c.agent_certificate_earliest_not_after_s = 0;
    for (const auto& entry : s.sessions) {
      const std::int64_t not_after = entry.second.not_after_s;
      if (not_after != 0 && (c.agent_certificate_earliest_not_after_s == 0 ||
                             not_after < c.agent_certificate_earliest_not_after_s)) {
        c.agent_certificate_earliest_not_after_s = not_after;
      }
    }
  }
  std::lock_guard lock(s.queue_mutex);
  c.store_queue_bytes = s.queue_bytes;
  c.store_queue_peak_bytes = s.queue_peak_bytes;
  if (s.mesh) c.mesh = s.mesh->counters();
  if (const auto tls = s.current_tls()) {
    c.certificate_not_after_s = tls->certificate_not_after_s();
    c.crl_next_update_s = tls->crl_next_update_s();
    c.crl_revoked_serials = tls->revoked_serials();
  }
  return c;
}

}  // namespace vantage::collector
