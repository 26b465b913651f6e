#include "agent/ship/shipper.hpp"

#include <asio/connect.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "agent/process_usage.hpp"
#include "platform/log.hpp"
#include "platform/random_seed.hpp"
#include "platform/tls/tls_stream.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::agent::ship {

namespace {

using platform::log;
using platform::LogLevel;
using Clock = std::chrono::steady_clock;

std::span<const std::byte> as_bytes(const std::vector<std::uint8_t>& v) {
  return std::as_bytes(std::span<const std::uint8_t>(v));
}

}  // namespace

struct Shipper::Impl {
  Impl(ShipperConfig c, Spool s, std::shared_ptr<platform::tls::TlsContext> t)
      : config(std::move(c)),
        spool(std::move(s)),
        tls(std::move(t)),
        work(io.get_executor()),
        timer(io),
        flush_timer(io),
        rng(platform::random_seed()) {}

  ShipperConfig config;
  Spool spool;
  std::shared_ptr<platform::tls::TlsContext> tls;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread thread;

  // Connection state, io thread only. generation tells a stale callback (from a connection
  // already given up) from a current one.
  std::uint64_t generation = 0;
  std::shared_ptr<platform::tls::TlsStream> stream;
  std::unique_ptr<asio::ip::tcp::socket> connecting;
  asio::steady_timer timer;  // connect/handshake timeout, ack timeout, reconnect backoff
  asio::steady_timer flush_timer;
  std::size_t collector_index = 0;
  std::uint32_t failures = 0;
  bool ready = false;  // Hello sent, batches may follow
  bool writing = false;
  bool stopping = false;
  // The collector refused this agent (identity, region): retrying keeps the spool draining once
  // an operator fixes it, but a stopping agent does not wait for acks that cannot come.
  bool refused = false;
  std::uint64_t sent_through = 0;  // highest seq written on this connection
  std::deque<std::vector<std::uint8_t>> writes;
  wire::FrameReader reader;
  std::array<std::uint8_t, 4096> read_buffer{};
  std::mt19937_64 rng;

  mutable std::mutex counters_mutex;
  ShipperCounters counters;

  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(counters_mutex);
    f(counters);
  }

  void spool_failed(const SpoolError& e) {
    log(LogLevel::kError, "spool: %s", e.message.c_str());
    update([](ShipperCounters& s) { ++s.spool_errors; });
  }

  void connect();
  void on_connected(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket);
  void on_handshake(std::uint64_t gen, std::error_code ec);
  void read(std::uint64_t gen);
  void on_read(std::uint64_t gen, std::error_code ec, std::size_t n);
  void on_ack(const wire::Ack& ack);
  void pump();
  void write_next(std::uint64_t gen);
  void arm_ack_timer();
  void fail(const std::string& why, bool tls_failure = false);
  void schedule_reconnect();
  void spool_frame(MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets);
  void arm_flush();
  SelfMetrics self_metrics(const MeasurementReport& report, const SpoolStats& spool_stats);
  const CollectorAddress& collector() const { return config.collectors[collector_index]; }
};

void Shipper::Impl::connect() {
  if (stopping) {
    return;
  }
  const std::uint64_t gen = ++generation;
  const CollectorAddress& c = collector();
  std::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  // Collectors are few and resolved rarely; a blocking lookup on this thread only delays
  // delivery, which the spool absorbs.
  const auto endpoints = resolver.resolve(c.host, std::to_string(c.port), ec);
  if (ec) {
    fail("resolve " + c.host + ": " + ec.message());
    return;
  }
  connecting = std::make_unique<asio::ip::tcp::socket>(io);
  timer.expires_after(config.connect_timeout);
  timer.async_wait([this, gen](std::error_code tec) {
    if (!tec && gen == generation && connecting) {
      std::error_code ignored;
      connecting->close(ignored);
    }
  });
  asio::async_connect(*connecting, endpoints,
                      [this, gen](std::error_code cec, const asio::ip::tcp::endpoint&) {
                        if (gen != generation || !connecting) {
                          return;
                        }
                        asio::ip::tcp::socket socket = std::move(*connecting);
                        connecting.reset();
                        on_connected(gen, cec, std::move(socket));
                      });
}

void Shipper::Impl::on_connected(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket) {
  timer.cancel();
  if (ec) {
    update([](ShipperCounters& s) { ++s.connect_failures; });
    fail("connect to " + collector().host + ":" + std::to_string(collector().port) + ": " +
         (ec == asio::error::operation_aborted ? std::string("timed out") : ec.message()));
    return;
  }
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  const std::string& name = collector().server_name.empty() ? collector().host : collector().server_name;
  stream = platform::tls::TlsStream::create(std::move(socket), tls, name);
  timer.expires_after(config.handshake_timeout);
  timer.async_wait([this, gen](std::error_code tec) {
    if (!tec && gen == generation && stream && !ready) {
      stream->close();
    }
  });
  stream->async_handshake([this, gen](std::error_code hec) { on_handshake(gen, hec); });
}

void Shipper::Impl::on_handshake(std::uint64_t gen, std::error_code ec) {
  if (gen != generation) {
    return;
  }
  timer.cancel();
  if (ec) {
    update([](ShipperCounters& s) { ++s.tls_failures; });
    fail("TLS handshake with " + collector().host + ": " +
             (ec == asio::error::operation_aborted ? std::string("timed out") : ec.message()),
         true);
    return;
  }
  const bool resumed = stream->resumed();
  update([resumed](ShipperCounters& s) {
    ++s.connects;
    s.connected = true;
    if (resumed) ++s.resumed;
  });
  log(LogLevel::kInfo, "connected to collector %s:%u (%s%s)", collector().host.c_str(),
      static_cast<unsigned>(collector().port), std::string(stream->protocol_version()).c_str(),
      resumed ? ", resumed" : "");
  reader = wire::FrameReader(config.max_frame);
  writes.clear();
  writing = false;
  std::vector<std::uint8_t> hello;
  wire::append_frame(hello, build_hello_frame(config.identity, config.capabilities));
  writes.push_back(std::move(hello));
  ready = true;
  // Everything not acked goes again, in order: the collector dedupes what it already has.
  sent_through = spool.acked_seq();
  write_next(gen);
  read(gen);
}

void Shipper::Impl::read(std::uint64_t gen) {
  stream->async_read_some(asio::buffer(read_buffer),
                          [this, gen](std::error_code ec, std::size_t n) { on_read(gen, ec, n); });
}

void Shipper::Impl::on_read(std::uint64_t gen, std::error_code ec, std::size_t n) {
  if (gen != generation) {
    return;
  }
  if (ec) {
    fail(ec == asio::error::eof ? "collector closed the connection" : "read: " + ec.message());
    return;
  }
  reader.feed({read_buffer.data(), n});
  for (;;) {
    const wire::FrameStatus status = reader.next();
    if (status == wire::FrameStatus::kNeedMore) {
      break;
    }
    if (status != wire::FrameStatus::kFrame) {
      fail(std::string("bad frame from collector: ") + wire::to_string(status));
      return;
    }
    const wire::Ack* ack = reader.frame()->message_as_Ack();
    if (ack == nullptr) {
      fail("collector sent something other than an Ack");
      return;
    }
    switch (ack->status()) {
      case wire::AckStatus::Stored:
        on_ack(*ack);
        break;
      case wire::AckStatus::Rejected: {
        update([](ShipperCounters& s) { ++s.rejected; });
        refused = true;
        const std::string reason = ack->reason() != nullptr ? ack->reason()->str() : "no reason given";
        log(LogLevel::kError, "collector %s refused this agent: %s", collector().host.c_str(),
            reason.c_str());
        fail("refused: " + reason);
        return;
      }
      case wire::AckStatus::RetryLater:
        update([](ShipperCounters& s) { ++s.retry_later; });
        fail("collector asked to retry later");
        return;
    }
    if (gen != generation) {
      return;
    }
  }
  read(gen);
}

void Shipper::Impl::on_ack(const wire::Ack& ack) {
  if (const SpoolError e = spool.ack(ack.seq())) {
    spool_failed(e);
  }
  failures = 0;  // the collector is working: the next outage starts from the shortest backoff
  refused = false;
  const SpoolStats stats = spool.stats();
  update([&stats](ShipperCounters& s) {
    s.acked_seq = stats.acked_seq;
    s.spool = stats;
  });
  arm_ack_timer();
  pump();
}

void Shipper::Impl::pump() {
  if (!ready || stopping) {
    return;
  }
  while (writes.size() < 2 && sent_through - spool.acked_seq() < config.max_in_flight) {
    std::optional<SpoolRecord> record = spool.next_unacked(sent_through);
    if (!record) {
      break;
    }
    // Never send a batch the disk might still lose: after a power cut its seq would be handed
    // out again, to a different batch, and the collector would drop that one as a duplicate.
    if (record->seq > spool.durable_seq()) {
      if (const SpoolError e = spool.flush()) {
        spool_failed(e);
        break;
      }
    }
    std::vector<std::uint8_t> frame;
    frame.reserve(wire::kFrameLengthSize + record->payload.size());
    wire::append_frame(
        frame, {reinterpret_cast<const std::uint8_t*>(record->payload.data()), record->payload.size()});
    writes.push_back(std::move(frame));
    sent_through = record->seq;
  }
  if (!writing && !writes.empty()) {
    write_next(generation);
  }
  arm_ack_timer();
}

void Shipper::Impl::write_next(std::uint64_t gen) {
  if (gen != generation || !ready) {
    return;
  }
  if (writes.empty()) {
    writing = false;
    return;
  }
  writing = true;
  stream->async_write(asio::buffer(writes.front()), [this, gen](std::error_code ec, std::size_t) {
    if (gen != generation) {
      return;
    }
    if (ec) {
      fail("write: " + ec.message());
      return;
    }
    writes.pop_front();
    update([](ShipperCounters& s) { ++s.frames_sent; });
    writing = false;
    if (writes.empty()) {
      pump();
    } else {
      write_next(gen);
    }
  });
}

void Shipper::Impl::arm_ack_timer() {
  if (!ready) {
    return;
  }
  if (sent_through <= spool.acked_seq()) {
    timer.cancel();
    return;
  }
  const std::uint64_t gen = generation;
  timer.expires_after(config.ack_timeout);
  timer.async_wait([this, gen](std::error_code ec) {
    if (!ec && gen == generation && ready) {
      fail("no ack for " + std::to_string(config.ack_timeout.count()) + " ms");
    }
  });
}

void Shipper::Impl::fail(const std::string& why, bool tls_failure) {
  (void)tls_failure;
  ++generation;  // every callback of the old connection is now stale
  ready = false;
  writing = false;
  writes.clear();
  timer.cancel();
  if (stream) {
    stream->close();
    stream.reset();
  }
  if (connecting) {
    std::error_code ignored;
    connecting->close(ignored);
    connecting.reset();
  }
  update([&why](ShipperCounters& s) {
    s.connected = false;
    s.last_error = why;
  });
  if (stopping) {
    return;
  }
  log(LogLevel::kWarning, "collector %s:%u: %s", collector().host.c_str(),
      static_cast<unsigned>(collector().port), why.c_str());
  ++failures;
  // Fail over: the next collector of the region gets the next attempt.
  collector_index = (collector_index + 1) % config.collectors.size();
  schedule_reconnect();
}

void Shipper::Impl::schedule_reconnect() {
  const std::uint32_t exponent = std::min<std::uint32_t>(failures, 20);
  const auto ceiling = std::min<std::chrono::milliseconds::rep>(config.backoff_max.count(),
                                                                config.backoff_initial.count() << exponent);
  std::uniform_int_distribution<std::chrono::milliseconds::rep> pick(0, std::max<std::int64_t>(ceiling, 1));
  const std::uint64_t gen = generation;
  timer.expires_after(std::chrono::milliseconds(pick(rng)));
  timer.async_wait([this, gen](std::error_code ec) {
    if (!ec && gen == generation) {
      connect();
    }
  });
}

void Shipper::Impl::spool_frame(MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets) {
  const std::uint64_t seq = spool.next_seq();
  const SpoolStats before = spool.stats();
  BatchExtras extras;
  extras.spool_dropped = before.dropped_total;
  extras.self = self_metrics(report, before);
  const std::vector<std::uint8_t> frame = build_batch_frame(config.identity, seq, report, targets, extras);
  if (const SpoolError e = spool.append(seq, as_bytes(frame))) {
    log(LogLevel::kError, "spool: batch %llu not stored: %s", static_cast<unsigned long long>(seq),
        e.message.c_str());
    update([](ShipperCounters& s) { ++s.spool_errors; });
    return;
  }
  const SpoolStats stats = spool.stats();
  update([&stats](ShipperCounters& s) {
    ++s.batches_spooled;
    s.spool = stats;
  });
  pump();
}

void add_to_baseline(SelfBaseline& baseline, const ShipperCounters& counters) {
  baseline.sessions += counters.connects;
  baseline.connect_failures += counters.connect_failures;
  baseline.tls_failures += counters.tls_failures;
  baseline.rejected += counters.rejected;
  baseline.spool_errors += counters.spool_errors;
}

SelfMetrics Shipper::Impl::self_metrics(const MeasurementReport& report, const SpoolStats& spool_stats) {
  const SelfBaseline& base = config.self_baseline;
  const ProcessUsage usage = read_process_usage();
  SelfMetrics m;
  m.process_start_ns = process_start_ns();
  m.config_generation = base.config_generation;
  m.rss_bytes = usage.rss_bytes;
  m.cpu_user_ns = usage.cpu_user_ns;
  m.cpu_system_ns = usage.cpu_system_ns;
  const MeasurementCounters& c = report.counters;
  m.probe_ring_dropped = base.probe_ring_dropped + c.udp.events_dropped + c.tcp.ring_full + c.icmp.ring_full;
  m.load_ring_dropped = base.load_ring_dropped + c.loads_dropped;
  m.spool_records = spool_stats.records;
  m.spool_bytes = spool_stats.live_bytes;
  std::lock_guard lock(counters_mutex);
  const std::uint64_t sessions = base.sessions + counters.connects;
  m.reconnects = sessions > 0 ? sessions - 1 : 0;
  m.connect_failures = base.connect_failures + counters.connect_failures;
  m.tls_failures = base.tls_failures + counters.tls_failures;
  m.rejected = base.rejected + counters.rejected;
  m.spool_errors = base.spool_errors + counters.spool_errors;
  return m;
}

void Shipper::Impl::arm_flush() {
  if (config.spool.fsync != SpoolConfig::Fsync::kInterval) {
    return;
  }
  flush_timer.expires_after(config.spool.fsync_interval);
  flush_timer.async_wait([this](std::error_code ec) {
    if (ec || stopping) {
      return;
    }
    if (const SpoolError e = spool.flush()) {
      spool_failed(e);
    }
    arm_flush();
  });
}

ShipperOpenResult Shipper::open(ShipperConfig config) {
  ShipperOpenResult result;
  if (config.collectors.empty()) {
    result.error = "no collector address";
    return result;
  }
  if (config.identity.agent_id.empty() || config.identity.region.empty()) {
    result.error = "agent id and region are required";
    return result;
  }
  platform::tls::TlsContextOptions tls = config.tls;
  tls.role = platform::tls::TlsRole::kClient;
  auto context = platform::tls::TlsContext::create(tls);
  if (!context) {
    result.error = context.error();
    return result;
  }
  Spool::Opened opened = Spool::open(config.spool);
  result.warnings = std::move(opened.warnings);
  if (!opened.spool) {
    result.error = opened.error.message;
    return result;
  }
  result.shipper.reset(new Shipper(
      std::make_unique<Impl>(std::move(config), std::move(*opened.spool), std::move(context).value())));
  return result;
}

Shipper::Shipper(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Shipper::~Shipper() { stop(std::chrono::milliseconds(0)); }

void Shipper::start() {
  Impl& s = *impl_;
  s.update([&s](ShipperCounters& c) {
    c.acked_seq = s.spool.acked_seq();
    c.spool = s.spool.stats();
  });
  asio::post(s.io, [&s] {
    s.arm_flush();
    s.connect();
  });
  s.thread = std::thread([&s] { s.io.run(); });
}

void Shipper::submit(MeasurementReport report, std::vector<ProbeTargetSpec> targets) {
  Impl& s = *impl_;
  asio::post(s.io, [&s, report = std::move(report), targets = std::move(targets)]() mutable {
    if (!s.stopping) {
      s.spool_frame(report, targets);
    }
  });
}

void Shipper::stop(std::chrono::milliseconds drain) {
  Impl& s = *impl_;
  if (!s.thread.joinable()) {
    return;
  }
  const auto deadline = Clock::now() + drain;
  // Drain: wait (bounded) until the collector holds everything spooled. A shipper waiting out a
  // reconnect backoff tries once more right away rather than giving up or sleeping through it.
  if (drain.count() > 0) {
    asio::post(s.io, [&s] {
      if (!s.ready && !s.refused && s.spool.acked_seq() + 1 < s.spool.next_seq() && !s.connecting &&
          !s.stream) {
        ++s.generation;
        s.timer.cancel();
        s.connect();
      }
    });
  }
  for (;;) {
    std::promise<bool> done;
    auto answer = done.get_future();
    asio::post(s.io,
               [&s, &done] { done.set_value(s.refused || s.spool.acked_seq() + 1 >= s.spool.next_seq()); });
    if (answer.get() || Clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::promise<void> stopped;
  asio::post(s.io, [&s, &stopped] {
    s.stopping = true;
    s.flush_timer.cancel();
    if (const SpoolError e = s.spool.flush()) {
      s.spool_failed(e);
    }
    s.fail("agent stopping");
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

ShipperCounters Shipper::counters() const {
  ShipperCounters c;
  {
    std::lock_guard lock(impl_->counters_mutex);
    c = impl_->counters;
  }
  return c;
}

}  // namespace vantage::agent::ship
