#include "collector/ingest_server.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "collector/store/sqlite_store.hpp"
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

std::string endpoint_text(const asio::ip::tcp::endpoint& e) {
  asio::ip::address address = e.address();
  // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; log them as what they are.
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  }
  const std::string host = address.to_string();
  return (address.is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(e.port());
}

// The peer closed the TCP connection without a TLS close_notify: an agent that stopped or
// crashed. Normal enough not to log as a failure.
bool peer_closed(const std::error_code& ec) {
  return ec == asio::error::eof ||
         (ec.category() == platform::tls::mbedtls_category() && ec.value() == MBEDTLS_ERR_SSL_CONN_EOF);
}

std::vector<std::uint8_t> ack_frame(std::uint64_t seq, wire::AckStatus status, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb(128);
  const auto ack = wire::CreateAckDirect(fbb, seq, status, reason.empty() ? nullptr : reason.c_str());
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Union()));
  std::vector<std::uint8_t> out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

std::string str(const flatbuffers::String* s) { return s == nullptr ? std::string() : s->str(); }

}  // namespace

const char* to_string(Reject reason) noexcept {
  switch (reason) {
    case Reject::kConnectionLimit:
      return "connection_limit";
    case Reject::kHandshake:
      return "handshake";
    case Reject::kTimeout:
      return "timeout";
    case Reject::kNoIdentity:
      return "no_identity";
    case Reject::kIdentity:
      return "identity";
    case Reject::kRegion:
      return "region";
    case Reject::kProtocol:
      return "protocol";
    case Reject::kFrame:
      return "frame";
    case Reject::kStore:
      return "store";
    case Reject::kCount:
      break;
  }
  return "unknown";
}

class Connection;

struct StoreItem {
  std::weak_ptr<Connection> connection;
  std::vector<std::uint8_t> frame;  // the verified FlatBuffer, without its length prefix
  std::string agent_id, region, pop, arch, software_version;
  std::int64_t received_ns = 0;
  std::uint64_t seq = 0;
};

struct IngestServer::Impl {
  explicit Impl(IngestConfig c) : config(std::move(c)), work(io.get_executor()) {}

  IngestConfig config;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::shared_ptr<platform::tls::TlsContext> tls;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors;
  std::thread io_thread;
  std::thread store_thread;
  std::shared_ptr<store::BatchSink> sink;

  std::mutex queue_mutex;
  std::condition_variable queue_cv;
  std::vector<StoreItem> queue;
  bool stopping = false;
  std::int64_t last_commit_end_ns = 0;  // CLOCK_MONOTONIC, under queue_mutex

  mutable std::mutex counters_mutex;
  IngestCounters counters;

  void count(Reject reason) {
    std::lock_guard lock(counters_mutex);
    ++counters.rejects[static_cast<std::size_t>(reason)];
  }
  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(counters_mutex);
    f(counters);
  }

  void accept(asio::ip::tcp::acceptor& acceptor);
  void enqueue(StoreItem item) {
    {
      std::lock_guard lock(queue_mutex);
      queue.push_back(std::move(item));
    }
    queue_cv.notify_one();
  }
  void run_store();
};

// One agent connection, on the io thread only; pending operations and queued store items keep it
// alive or (store items) find it gone.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(IngestServer::Impl& server, std::shared_ptr<platform::tls::TlsStream> stream, std::string peer)
      : server_(server),
        stream_(std::move(stream)),
        timer_(server.io),
        peer_(std::move(peer)),
        reader_(server.config.max_frame) {}

  void start() {
    server_.update([](IngestCounters& c) {
      ++c.connections_accepted;
      ++c.connections_open;
    });
    arm_timer(server_.config.handshake_timeout);
    stream_->async_handshake([self = shared_from_this()](std::error_code ec) { self->on_handshake(ec); });
  }

  ~Connection() {
    server_.update([](IngestCounters& c) { --c.connections_open; });
  }

  // From the store thread's results, on the io thread.
  void on_stored(std::uint64_t seq, bool ok, bool duplicate) {
    if (pending_ > 0) {
      --pending_;
    }
    if (closed_) {
      return;
    }
    if (!ok) {
      // The agent keeps the batch in its spool and resends after reconnecting.
      send_then_close(ack_frame(seq, wire::AckStatus::RetryLater, "store unavailable"));
      return;
    }
    server_.update([duplicate](IngestCounters& c) {
      ++(duplicate ? c.batches_duplicate : c.batches_stored);
      ++c.acks_sent;
    });
    send(ack_frame(seq, wire::AckStatus::Stored, {}));
    if (read_paused_ && pending_ < server_.config.max_pending_per_connection) {
      read_paused_ = false;
      read();
    }
  }

 private:
  void arm_timer(std::chrono::milliseconds timeout) {
    timer_.expires_after(timeout);
    timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->closed_) {
        return;
      }
      log(LogLevel::kNotice, "%s: %s timeout, closing", self->peer_.c_str(),
          self->handshake_done_ ? "idle" : "handshake");
      self->server_.count(Reject::kTimeout);
      self->close();
    });
  }

  void on_handshake(std::error_code ec) {
    if (closed_) {
      return;
    }
    if (ec) {
      log(LogLevel::kNotice, "%s: TLS handshake failed: %s", peer_.c_str(), ec.message().c_str());
      server_.count(Reject::kHandshake);
      close();
      return;
    }
    handshake_done_ = true;
    server_.update([](IngestCounters& c) { ++c.handshakes; });
    cn_ = stream_->peer_common_name();
    if (cn_.empty()) {
      log(LogLevel::kWarning, "%s: no client certificate identity, refusing", peer_.c_str());
      server_.count(Reject::kNoIdentity);
      send_then_close(ack_frame(0, wire::AckStatus::Rejected, "no client certificate identity"));
      return;
    }
    arm_timer(server_.config.idle_timeout);
    read();
  }

  void read() {
    stream_->async_read_some(
        asio::buffer(buffer_),
        [self = shared_from_this()](std::error_code ec, std::size_t n) { self->on_read(ec, n); });
  }

  void on_read(std::error_code ec, std::size_t n) {
    if (closed_) {
      return;
    }
    if (ec) {
      if (peer_closed(ec)) {
        log(LogLevel::kDebug, "%s (%s): closed by the agent", peer_.c_str(), cn_.c_str());
      } else {
        log(LogLevel::kInfo, "%s (%s): connection ended: %s", peer_.c_str(), cn_.c_str(),
            ec.message().c_str());
      }
      close();
      return;
    }
    reader_.feed({buffer_.data(), n});
    for (;;) {
      const wire::FrameStatus status = reader_.next();
      if (status == wire::FrameStatus::kNeedMore) {
        break;
      }
      if (status != wire::FrameStatus::kFrame) {
        log(LogLevel::kWarning, "%s (%s): %s, closing", peer_.c_str(), cn_.c_str(), wire::to_string(status));
        server_.count(Reject::kFrame);
        close();
        return;
      }
      server_.update([](IngestCounters& c) { ++c.frames; });
      arm_timer(server_.config.idle_timeout);
      if (!on_frame(*reader_.frame(), reader_.frame_bytes())) {
        return;
      }
    }
    if (pending_ >= server_.config.max_pending_per_connection) {
      read_paused_ = true;  // resumed by on_stored()
      return;
    }
    read();
  }

  // False when the connection is being closed.
  bool on_frame(const wire::Frame& frame, std::span<const std::uint8_t> bytes) {
    if (const wire::Hello* hello = frame.message_as_Hello()) {
      if (hello_) {
        return refuse(Reject::kProtocol, "a second Hello");
      }
      agent_id_ = str(hello->agent_id());
      region_ = str(hello->region());
      pop_ = str(hello->pop());
      arch_ = str(hello->arch());
      version_ = str(hello->software_version());
      if (agent_id_ != cn_) {
        return refuse(Reject::kIdentity,
                      "Hello claims agent '" + agent_id_ + "' but the certificate is for '" + cn_ + "'");
      }
      const auto& served = server_.config.regions;
      if (std::find(served.begin(), served.end(), region_) == served.end()) {
        std::string list;
        for (const std::string& r : served) list += (list.empty() ? "" : ", ") + r;
        return refuse(Reject::kRegion, "region '" + region_ + "' is not served here (serves: " + list + ")");
      }
      hello_ = true;
      log(LogLevel::kInfo, "%s: agent %s (%s/%s, %s, %s) connected%s", peer_.c_str(), agent_id_.c_str(),
          region_.c_str(), pop_.c_str(), arch_.c_str(), version_.c_str(),
          stream_->resumed() ? ", resumed" : "");
      return true;
    }
    if (const wire::Batch* batch = frame.message_as_Batch()) {
      if (!hello_) {
        return refuse(Reject::kProtocol, "a Batch before Hello");
      }
      if (str(batch->agent_id()) != agent_id_) {
        return refuse(Reject::kIdentity,
                      "a Batch for agent '" + str(batch->agent_id()) + "' on " + agent_id_ + "'s connection");
      }
      if (batch->seq() == 0) {
        return refuse(Reject::kProtocol, "a Batch with seq 0");
      }
      StoreItem item;
      item.connection = weak_from_this();
      item.frame.assign(bytes.begin(), bytes.end());
      item.agent_id = agent_id_;
      item.region = region_;
      item.pop = pop_;
      item.arch = arch_;
      item.software_version = version_;
      item.received_ns = platform::realtime_ns();
      item.seq = batch->seq();
      ++pending_;
      server_.enqueue(std::move(item));
      return true;
    }
    return refuse(Reject::kProtocol, "an unexpected message");
  }

  bool refuse(Reject reason, const std::string& why) {
    log(LogLevel::kWarning, "%s (%s): refused: %s", peer_.c_str(), cn_.c_str(), why.c_str());
    server_.count(reason);
    send_then_close(ack_frame(0, wire::AckStatus::Rejected, why));
    return false;
  }

  void send(std::vector<std::uint8_t> frame) {
    writes_.push_back(std::move(frame));
    if (!writing_) {
      write_next();
    }
  }

  void send_then_close(std::vector<std::uint8_t> frame) {
    close_after_write_ = true;
    send(std::move(frame));
  }

  void write_next() {
    if (writes_.empty() || closed_) {
      writing_ = false;
      if (close_after_write_ && !closed_) {
        close();
      }
      return;
    }
    writing_ = true;
    const std::vector<std::uint8_t>& front = writes_.front();
    stream_->async_write(asio::buffer(front), [self = shared_from_this()](std::error_code ec, std::size_t) {
      if (self->closed_) {
        return;
      }
      if (ec) {
        self->close();
        return;
      }
      self->writes_.pop_front();
      self->write_next();
    });
  }

  void close() {
    if (closed_) {
      return;
    }
    closed_ = true;
    timer_.cancel();
    stream_->close();
  }

  IngestServer::Impl& server_;
  std::shared_ptr<platform::tls::TlsStream> stream_;
  asio::steady_timer timer_;
  std::string peer_;
  std::string cn_;
  std::string agent_id_, region_, pop_, arch_, version_;
  wire::FrameReader reader_;
  std::array<std::uint8_t, 16384> buffer_{};
  std::deque<std::vector<std::uint8_t>> writes_;
  std::size_t pending_ = 0;
  bool handshake_done_ = false;
  bool hello_ = false;
  bool writing_ = false;
  bool read_paused_ = false;
  bool close_after_write_ = false;
  bool closed_ = false;
};

void IngestServer::Impl::accept(asio::ip::tcp::acceptor& acceptor) {
  acceptor.async_accept([this, &acceptor](std::error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) {
      return;
    }
    if (!ec) {
      std::error_code peer_ec;
      const auto remote = socket.remote_endpoint(peer_ec);
      const std::string peer = peer_ec ? std::string("unknown peer") : endpoint_text(remote);
      bool full = false;
      {
        std::lock_guard lock(counters_mutex);
        full = counters.connections_open >= config.max_connections;
      }
      if (full) {
        log(LogLevel::kWarning, "%s: connection limit (%zu) reached, closing", peer.c_str(),
            config.max_connections);
        count(Reject::kConnectionLimit);
        std::error_code ignored;
        socket.close(ignored);
      } else {
        std::make_shared<Connection>(*this, platform::tls::TlsStream::create(std::move(socket), tls), peer)
            ->start();
      }
    } else {
      // EMFILE and friends: keep accepting; the next attempt may succeed once others close.
      log(LogLevel::kWarning, "accept failed: %s", ec.message().c_str());
    }
    accept(acceptor);
  });
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
      items.swap(queue);
    }
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
      in.received_ns = item.received_ns;
      in.frame = item.frame;
      batches.push_back(in);
    }
    const std::int64_t started_ns = platform::monotonic_ns();
    auto result = sink->store(batches);
    const std::int64_t ended_ns = platform::monotonic_ns();
    if (!result) {
      log(LogLevel::kError, "store: %s", result.error.c_str());
    } else if (result.value->size() != batches.size()) {
      log(LogLevel::kError, "store: the %s sink answered %zu outcomes for %zu batches", sink->name(),
          result.value->size(), batches.size());
      result = {};
      result.error = "outcome count mismatch";
    }
    std::vector<store::StoreOutcome> outcomes =
        result ? std::move(*result.value)
               : std::vector<store::StoreOutcome>(items.size(), store::StoreOutcome::kFailed);
    if (config.on_stored) {
      for (std::size_t i = 0; i < batches.size(); ++i) {
        if (outcomes[i] == store::StoreOutcome::kStored) config.on_stored(batches[i]);
      }
    }
    auto* sqlite = dynamic_cast<store::SqliteSink*>(sink.get());
    const std::int64_t commit_ns =
        sqlite != nullptr ? sqlite->sqlite().last_commit_ns() : ended_ns - started_ns;
    {
      std::lock_guard lock(queue_mutex);
      last_commit_end_ns = ended_ns;
    }
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
    asio::post(io, [items = std::move(items), outcomes = std::move(outcomes)]() {
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (auto connection = items[i].connection.lock()) {
          const bool ok = outcomes[i] != store::StoreOutcome::kFailed;
          connection->on_stored(items[i].seq, ok, outcomes[i] == store::StoreOutcome::kDuplicate);
        }
      }
    });
    items = {};
  }
}

IngestServer::IngestServer(IngestConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

IngestServer::~IngestServer() { stop(); }

IngestStartResult IngestServer::start() {
  Impl& s = *impl_;
  if (s.config.regions.empty()) {
    return {"no region to serve: a collector serves at least one region"};
  }
  if (s.config.listen.empty()) {
    return {"no listen address"};
  }
  platform::tls::TlsContextOptions tls = s.config.tls;
  tls.role = platform::tls::TlsRole::kServer;
  auto context = platform::tls::TlsContext::create(tls);
  if (!context) {
    return {context.error};
  }
  s.tls = std::move(context.context);

  if (s.config.sink) {
    s.sink = s.config.sink;
  } else {
    auto opened = store::SqliteStore::open(s.config.database);
    if (!opened) {
      return {opened.error};
    }
    s.sink = std::make_shared<store::SqliteSink>(std::move(*opened.value));
  }

  for (const asio::ip::tcp::endpoint& endpoint : s.config.listen) {
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(s.io);
    std::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec && endpoint.address().is_v6() && endpoint.address().is_unspecified()) {
      acceptor->set_option(asio::ip::v6_only(false), ec);
    }
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return {"listen on " + endpoint_text(endpoint) + ": " + ec.message()};
    }
    s.acceptors.push_back(std::move(acceptor));
  }
  for (auto& acceptor : s.acceptors) {
    s.accept(*acceptor);
  }
  s.store_thread = std::thread([&s] { s.run_store(); });
  s.io_thread = std::thread([&s] { s.io.run(); });
  return {};
}

void IngestServer::stop() {
  Impl& s = *impl_;
  if (!s.io_thread.joinable()) {
    return;
  }
  // Batches already queued are committed (their agents will get no ack and resend: harmless,
  // the store dedupes), then the io thread stops with every connection.
  {
    std::lock_guard lock(s.queue_mutex);
    s.stopping = true;
  }
  s.queue_cv.notify_one();
  s.store_thread.join();
  s.io.stop();
  s.io_thread.join();
  s.acceptors.clear();
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
  if (!s.io_thread.joinable()) {
    return false;
  }
  auto answered = std::make_shared<std::promise<void>>();
  auto future = answered->get_future();
  asio::post(s.io, [answered] { answered->set_value(); });
  if (future.wait_for(std::chrono::seconds(1)) != std::future_status::ready) {
    return false;
  }
  std::lock_guard lock(s.queue_mutex);
  return s.queue.empty() || platform::monotonic_ns() - s.last_commit_end_ns < 30'000'000'000;
}

IngestCounters IngestServer::counters() const {
  std::lock_guard lock(impl_->counters_mutex);
  return impl_->counters;
}

}  // namespace vantage::collector
