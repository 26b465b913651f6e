#include "agent/ship/shipper.hpp"

#include <asio/connect.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <future>
#include <thread>

#include "agent/ship/shipper_session.hpp"
#include "platform/random_seed.hpp"
#include "platform/tls/tls_stream.hpp"

namespace vantage::agent::ship {

using Clock = SessionClock;

// The I/O under the session: one TCP connection with TLS over it, and the session's timers. conn
// tells a stale callback (from a connection the session already gave up) from a current one.
struct Shipper::Impl final : SessionIo {
  Impl(ShipperConfig c, Spool s, std::shared_ptr<platform::tls::TlsContext> t)
      : tls(std::move(t)),
        work(io.get_executor()),
        timers{asio::steady_timer(io), asio::steady_timer(io), asio::steady_timer(io)},
        session(
            std::move(c), std::move(s), *this, [] { return Clock::now(); }, platform::random_seed()) {}

  std::shared_ptr<platform::tls::TlsContext> tls;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread thread;

  // io thread only.
  std::uint64_t conn = 0;
  std::shared_ptr<platform::tls::TlsStream> stream;
  std::unique_ptr<asio::ip::tcp::socket> connecting;
  std::array<asio::steady_timer, kSessionTimers> timers;
  std::array<std::uint64_t, kSessionTimers> armed{};  // tells a stale expiry from the current one
  std::array<std::uint8_t, 4096> read_buffer{};
  ShipperSession session;

  void connect(const CollectorAddress& c) override;
  void write(std::span<const std::uint8_t> bytes) override;
  void close() override;
  void arm_timer(SessionTimer timer, Clock::time_point at) override;
  void cancel_timer(SessionTimer timer) override;
  void on_tcp(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket, const std::string& name);
  void read(std::uint64_t gen);
};

void Shipper::Impl::connect(const CollectorAddress& c) {
  const std::uint64_t gen = ++conn;
  std::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  // Collectors are few and resolved rarely; a blocking lookup on this thread only delays
  // delivery, which the spool absorbs.
  const auto endpoints = resolver.resolve(c.host, std::to_string(c.port), ec);
  if (ec) {
    session.on_resolve_failed(ec.message());
    return;
  }
  connecting = std::make_unique<asio::ip::tcp::socket>(io);
  const std::string name = c.server_name.empty() ? c.host : c.server_name;
  asio::async_connect(*connecting, endpoints,
                      [this, gen, name](std::error_code cec, const asio::ip::tcp::endpoint&) {
                        if (gen != conn || !connecting) {
                          return;
                        }
                        asio::ip::tcp::socket socket = std::move(*connecting);
                        connecting.reset();
                        on_tcp(gen, cec, std::move(socket), name);
                      });
}

void Shipper::Impl::on_tcp(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket,
                           const std::string& name) {
  if (ec) {
    session.on_connect_failed(ec == asio::error::operation_aborted ? std::string("timed out") : ec.message());
    return;
  }
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  stream = platform::tls::TlsStream::create(std::move(socket), tls, name);
  session.on_connected();
  stream->async_handshake([this, gen](std::error_code hec) {
    if (gen != conn) {
      return;
    }
    if (hec) {
      session.on_handshake_failed(hec == asio::error::operation_aborted ? std::string("timed out")
                                                                        : hec.message());
      return;
    }
    session.on_session(stream->protocol_version(), stream->resumed());
    if (gen == conn) {
      read(gen);
    }
  });
}

void Shipper::Impl::read(std::uint64_t gen) {
  stream->async_read_some(asio::buffer(read_buffer), [this, gen](std::error_code ec, std::size_t n) {
    if (gen != conn) {
      return;
    }
    if (ec == asio::error::eof) {
      session.on_peer_closed();
    } else if (ec) {
      session.on_read_failed(ec.message());
    } else {
      session.on_bytes({read_buffer.data(), n});
      if (gen == conn) {
        read(gen);
      }
    }
  });
}

void Shipper::Impl::write(std::span<const std::uint8_t> bytes) {
  const std::uint64_t gen = conn;
  stream->async_write(asio::buffer(bytes.data(), bytes.size()), [this, gen](std::error_code ec, std::size_t) {
    if (gen != conn) {
      return;
    }
    if (ec) {
      session.on_write_failed(ec.message());
    } else {
      session.on_write_done();
    }
  });
}

void Shipper::Impl::close() {
  ++conn;  // every callback of the old connection is now stale
  std::error_code ignored;
  if (connecting) connecting->close(ignored);
  if (stream) stream->close();
  connecting.reset();
  stream.reset();
}

void Shipper::Impl::arm_timer(SessionTimer timer, Clock::time_point at) {
  const auto i = static_cast<std::size_t>(timer);
  const std::uint64_t gen = ++armed[i];
  timers[i].expires_at(at);
  timers[i].async_wait([this, timer, i, gen](std::error_code ec) {
    if (!ec && gen == armed[i]) {
      session.on_timer(timer);
    }
  });
}

void Shipper::Impl::cancel_timer(SessionTimer timer) {
  const auto i = static_cast<std::size_t>(timer);
  ++armed[i];
  timers[i].cancel();
}

void add_to_baseline(SelfBaseline& baseline, const ShipperCounters& counters) {
  baseline.sessions += counters.connects;
  baseline.connect_failures += counters.connect_failures;
  baseline.tls_failures += counters.tls_failures;
  baseline.rejected += counters.rejected;
  baseline.spool_errors += counters.spool_errors + counters.spool.retried_errors;
  baseline.spool_lost += counters.spool.lost();
  baseline.spool_sync_stalls += counters.spool.sync_stalls;
}

platform::Result<std::unique_ptr<Shipper>> Shipper::open(ShipperConfig config,
                                                         std::vector<std::string>& warnings) {
  if (config.collectors.empty()) {
    return platform::Status::error("no collector address");
  }
  if (config.identity.agent_id.empty() || config.identity.region.empty()) {
    return platform::Status::error("agent id and region are required");
  }
  platform::tls::TlsContextOptions tls = config.tls;
  tls.role = platform::tls::TlsRole::kClient;
  auto context = platform::tls::TlsContext::create(tls);
  if (!context) {
    return context.status();
  }
  platform::Result<Spool> spool = Spool::open(config.spool, warnings);
  if (!spool) {
    return spool.status();
  }
  return std::unique_ptr<Shipper>(new Shipper(
      std::make_unique<Impl>(std::move(config), std::move(spool).value(), std::move(context).value())));
}

Shipper::Shipper(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Shipper::~Shipper() { stop(std::chrono::milliseconds(0)); }

void Shipper::start() {
  Impl& s = *impl_;
  s.session.publish_spool_counters();
  asio::post(s.io, [&s] { s.session.start(); });
  s.thread = std::thread([&s] { s.io.run(); });
}

void Shipper::submit(MeasurementReport report, std::vector<ProbeTargetSpec> targets) {
  Impl& s = *impl_;
  asio::post(s.io, [&s, report = std::move(report), targets = std::move(targets)]() mutable {
    s.session.submit(report, targets);
  });
}

void Shipper::stop(std::chrono::milliseconds drain) {
  Impl& s = *impl_;
  if (!s.thread.joinable()) {
    return;
  }
  // Drain: wait (bounded) until the collector holds everything spooled.
  std::promise<void> drained;
  asio::post(s.io, [&s, &drained, drain] { s.session.drain(drain, [&drained] { drained.set_value(); }); });
  drained.get_future().wait();
  std::promise<void> stopped;
  asio::post(s.io, [&s, &stopped] {
    s.session.shut_down();
    stopped.set_value();
  });
  stopped.get_future().wait();
  s.work.reset();
  s.io.stop();
  s.thread.join();
}

bool Shipper::responsive(std::chrono::milliseconds timeout) const {
  Impl& s = *impl_;
  if (!s.thread.joinable()) {
    return false;
  }
  auto done = std::make_shared<std::promise<void>>();
  auto answered = done->get_future();
  asio::post(s.io, [done] { done->set_value(); });
  return answered.wait_for(timeout) == std::future_status::ready;
}

ShipperCounters Shipper::counters() const { return impl_->session.counters(); }

}  // namespace vantage::agent::ship
