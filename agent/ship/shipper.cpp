#include "agent/ship/shipper.hpp"

#include <asio/connect.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <future>
#include <thread>

#include "agent/ship/shipper_session.hpp"
#include "platform/log.hpp"
#include "platform/random_seed.hpp"
#include "platform/tls/tls_error.hpp"
#include "platform/tls/tls_stream.hpp"

#include <mbedtls/ssl.h>

namespace vantage::agent::ship {

using Clock = SessionClock;
using platform::log;
using platform::LogLevel;

namespace {

// A read error, with what it most likely means when it is the connection's first answer: a TLS 1.3
// collector that refuses the agent's certificate after the handshake (revoked, expired, another
// CA) sends its alert under the handshake keys, which this side no longer reads (mbedTLS 3.6), so
// the refusal arrives as a record that fails its MAC.
std::string read_error(const std::error_code& ec, bool heard_from_collector) {
  std::string why = ec.message();
  if (!heard_from_collector && ec.category() == platform::tls::mbedtls_category() &&
      ec.value() == MBEDTLS_ERR_SSL_INVALID_MAC) {
    why += " as the collector's first answer: it most likely refused this agent's certificate (revoked, expired "
           "or from another CA; the collector's log says which)";
  }
  return why;
}

}  // namespace

// The I/O under the session: one TCP connection with TLS over it, and the session's timers. conn
// tells a stale callback (from a connection the session already gave up) from a current one.
struct Shipper::Impl final : SessionIo {
  Impl(ShipperConfig c, Spool s, std::shared_ptr<platform::tls::TlsContext> t)
      : session_config_collectors(c.collectors),
        resolve_schedule(c.resolve),
        tls(std::move(t)),
        work(io.get_executor()),
        timers{asio::steady_timer(io), asio::steady_timer(io), asio::steady_timer(io)},
        session(
            std::move(c), std::move(s), *this, [] { return Clock::now(); }, platform::random_seed()) {}

  // Copied before the config moves into the session: what the name resolver needs.
  std::vector<CollectorAddress> session_config_collectors;
  ResolveSchedule resolve_schedule;
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
  bool heard_from_collector = false;  // this connection has read bytes
  ShipperSession session;

  // Collector names (not IP addresses), resolved on the resolver's own thread. A connect to a
  // name whose first lookup has not finished waits for it (the session's connect timeout bounds
  // that); pending_gen is the attempt waiting, 0 for none.
  std::vector<std::string> names;
  std::unique_ptr<NameResolver> resolver;
  std::uint64_t pending_gen = 0;
  std::size_t pending_name = 0;
  CollectorAddress pending_collector;
  // The name of the connect in flight (names.size(): an IP address). A connect to it that fails
  // or times out looks it up again at once: the collector may have moved.
  std::size_t connecting_name = 0;

  void connect(const CollectorAddress& c) override;
  void write(std::span<const std::uint8_t> bytes) override;
  void close() override;
  void arm_timer(SessionTimer timer, Clock::time_point at) override;
  void cancel_timer(SessionTimer timer) override;
  void on_tcp(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket, const std::string& name);
  void connect_to(std::uint64_t gen, const CollectorAddress& c, const std::vector<asio::ip::address>& addresses);
  void on_name(std::size_t name);
  void read(std::uint64_t gen);
};

void Shipper::Impl::connect(const CollectorAddress& c) {
  const std::uint64_t gen = ++conn;
  pending_gen = 0;
  std::error_code ec;
  const asio::ip::address literal = asio::ip::make_address(c.host, ec);
  if (!ec) {
    connect_to(gen, c, {literal});
    return;
  }
  // No DNS on this thread: the watchdog watches it, and a dead DNS server blocks a lookup for
  // its timeout times its attempts. The resolver's latest answer is used, or awaited.
  const std::size_t name =
      static_cast<std::size_t>(std::find(names.begin(), names.end(), c.host) - names.begin());
  const NameState state = resolver ? resolver->state(name) : NameState{};
  if (!state.all.empty()) {
    connect_to(gen, c, state.all);
  } else if (state.looked_up) {
    session.on_resolve_failed(state.error.empty() ? "no address" : state.error);
  } else {
    pending_gen = gen;
    pending_name = name;
    pending_collector = c;
  }
}

void Shipper::Impl::on_name(std::size_t name) {
  if (pending_gen == 0 || pending_gen != conn || pending_name != name) {
    if (!resolver->state(name).all.empty()) {
      session.on_collector_resolved();  // no need to sit out a backoff earned by the missing name
    }
    return;
  }
  pending_gen = 0;
  const NameState state = resolver->state(name);
  if (!state.all.empty()) {
    connect_to(conn, pending_collector, state.all);
  } else {
    session.on_resolve_failed(state.error.empty() ? "no address" : state.error);
  }
}

void Shipper::Impl::connect_to(std::uint64_t gen, const CollectorAddress& c,
                               const std::vector<asio::ip::address>& addresses) {
  std::vector<asio::ip::tcp::endpoint> endpoints;
  endpoints.reserve(addresses.size());
  for (const asio::ip::address& a : addresses) {
    endpoints.emplace_back(a, c.port);
  }
  connecting = std::make_unique<asio::ip::tcp::socket>(io);
  connecting_name = static_cast<std::size_t>(std::find(names.begin(), names.end(), c.host) - names.begin());
  const std::string name = c.server_name.empty() ? c.host : c.server_name;
  asio::async_connect(*connecting, endpoints,
                      [this, gen, name](std::error_code cec, const asio::ip::tcp::endpoint&) {
                        if (gen != conn || !connecting) {
                          return;
                        }
                        if (cec && resolver && connecting_name < names.size()) resolver->refresh(connecting_name);
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
    heard_from_collector = false;
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
      session.on_read_failed(read_error(ec, heard_from_collector));
    } else {
      heard_from_collector = true;
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
  // A connect still in flight timed out (or the shipper stops): its name is looked up again.
  if (connecting && resolver && connecting_name < names.size()) resolver->refresh(connecting_name);
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
  baseline.spool_bad = counters.spool_bad;
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
  for (const CollectorAddress& c : s.session_config_collectors) {
    std::error_code ec;
    (void)asio::ip::make_address(c.host, ec);
    if (ec && std::find(s.names.begin(), s.names.end(), c.host) == s.names.end()) {
      s.names.push_back(c.host);
    }
  }
  if (!s.names.empty()) {
    Impl* p = &s;
    s.resolver = std::make_unique<NameResolver>(
        s.names, s.resolve_schedule, [p](std::size_t name, const NameState& state) {
          // Once per change, on the resolver's thread; the connect waiting for it hears on the io thread.
          if (state.address) {
            log(LogLevel::kInfo, "collector %s resolves to %s", p->names[name].c_str(),
                state.address->to_string().c_str());
          } else {
            log(LogLevel::kWarning, "collector %s does not resolve (%s); retrying in the background",
                p->names[name].c_str(), state.error.c_str());
          }
          asio::post(p->io, [p, name] { p->on_name(name); });
        });
    s.resolver->start();
  }
  s.session.publish_spool_counters();
  asio::post(s.io, [&s] { s.session.start(); });
  s.thread = std::thread([&s] { s.io.run(); });
}

void Shipper::submit(MeasurementReport report, std::vector<ProbeTargetSpec> targets,
                     std::uint64_t target_list_version) {
  Impl& s = *impl_;
  asio::post(s.io, [&s, report = std::move(report), targets = std::move(targets), target_list_version]() mutable {
    s.session.submit(report, targets, target_list_version);
  });
}

void Shipper::set_target_list_version(std::uint64_t version) {
  Impl& s = *impl_;
  asio::post(s.io, [&s, version] { s.session.set_target_list_version(version); });
}

void Shipper::add_measurement_baseline(std::uint64_t probe_ring_dropped, std::uint64_t load_ring_dropped) {
  Impl& s = *impl_;
  asio::post(s.io, [&s, probe_ring_dropped, load_ring_dropped] {
    s.session.add_measurement_baseline(probe_ring_dropped, load_ring_dropped);
  });
}

void Shipper::stop(std::chrono::milliseconds drain) {
  Impl& s = *impl_;
  if (s.resolver) {
    s.resolver->stop();  // no callback (and no post to io) after this
  }
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
