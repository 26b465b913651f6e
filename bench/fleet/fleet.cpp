#include "bench/fleet/fleet.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <future>
#include <random>
#include <thread>

#include "platform/clock.hpp"
#include "platform/tls/tls_stream.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::fleet {

std::unique_ptr<asio::ip::tcp::socket> socket_from(asio::io_context& io, const asio::ip::address_v4& source,
                                                   std::error_code& ec) {
  auto socket = std::make_unique<asio::ip::tcp::socket>(io);
  socket->open(asio::ip::tcp::v4(), ec);
  if (!ec) {
    const int one = 1;
    ::setsockopt(socket->native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    socket->bind(asio::ip::tcp::endpoint(source, 0), ec);
  }
  if (ec) socket.reset();
  return socket;
}

using Clock = std::chrono::steady_clock;

void FleetStats::add(const FleetStats& o) {
  full_handshakes += o.full_handshakes;
  resumed_handshakes += o.resumed_handshakes;
  connect_failures += o.connect_failures;
  tls_failures += o.tls_failures;
  disconnects += o.disconnects;
  retry_later += o.retry_later;
  rejected += o.rejected;
  ack_timeouts += o.ack_timeouts;
  frames_sent += o.frames_sent;
  batches_acked += o.batches_acked;
  summaries_acked += o.summaries_acked;
  connected_now += o.connected_now;
  agents_acked += o.agents_acked;
  unacked_now += o.unacked_now;
  storm_done += o.storm_done;
  storm_last_ack_ns = std::max(storm_last_ack_ns, o.storm_last_ack_ns);
  static_cast<void>(ack_latency.merge(o.ack_latency));  // one scheme on both sides: never refused
  if (!o.last_reject_reason.empty()) last_reject_reason = o.last_reject_reason;
}

class SimAgent;

struct Fleet::Shard {
  Shard(const FleetOptions& o, const BatchFactory& f, const std::atomic<std::int64_t>& r)
      : options(o), factory(f), record_since_ns(r), work(io.get_executor()) {}
  const FleetOptions& options;
  const BatchFactory& factory;
  const std::atomic<std::int64_t>& record_since_ns;
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread thread;
  FleetStats stats;  // io thread only; states (connected_now, ...) kept live here
  // Declared after io: destroyed before it, so the agents' timers and sockets go first.
  std::vector<std::unique_ptr<SimAgent>> agents;
  // The handshake gate (FleetOptions::max_handshakes_in_flight, this shard's share).
  std::size_t handshake_slots = 1;
  std::size_t handshaking = 0;
  std::deque<SimAgent*> waiting_for_slot;
  void release_slot();
};

// One simulated agent; every member is touched on its shard's io thread only.
class SimAgent {
 public:
  SimAgent(Fleet::Shard& shard, AgentSetup setup, asio::ip::address_v4 source, asio::ip::tcp::endpoint collector)
      : shard_(shard),
        id_(std::move(setup.identity)),
        tls_(std::move(setup.tls)),
        source_(source),
        collector_(collector),
        timer_(shard.io),
        send_timer_(shard.io),
        ack_timer_(shard.io),
        rng_(0x9e3779b97f4a7c15ULL ^ id_.index) {
    // A simulated agent is a freshly installed one: a new spool, a new random incarnation.
    if (id_.incarnation == std::array<std::uint8_t, 16>{}) {
      std::random_device random;
      for (std::size_t i = 0; i < id_.incarnation.size(); i += 4) {
        const std::uint32_t r = random();
        for (std::size_t k = 0; k < 4; ++k) id_.incarnation[i + k] = static_cast<std::uint8_t>(r >> (8 * k));
      }
    }
  }

  const AgentIdentity& identity() const noexcept { return id_; }
  std::uint64_t acked_through() const noexcept { return acked_through_; }
  std::uint64_t made_through() const noexcept { return next_seq_ - 1; }
  std::size_t unacked() const noexcept { return unacked_.size(); }

  void connect() {
    if (closing_ || connecting_ || stream_ || waiting_slot_) return;
    if (!holding_slot_) {
      if (shard_.handshaking >= shard_.handshake_slots) {
        waiting_slot_ = true;
        shard_.waiting_for_slot.push_back(this);
        return;
      }
      ++shard_.handshaking;
      holding_slot_ = true;
    }
    const std::uint64_t gen = ++gen_;
    std::error_code ec;
    connecting_ = socket_from(shard_.io, source_, ec);
    if (ec) {
      ++shard_.stats.connect_failures;
      fail(false);
      return;
    }
    timer_.expires_after(shard_.options.connect_timeout);
    timer_.async_wait([this, gen](std::error_code tec) {
      if (!tec && gen == gen_ && connecting_) {
        std::error_code ignored;
        connecting_->close(ignored);
      }
    });
    connecting_->async_connect(collector_, [this, gen](std::error_code cec) {
      if (gen != gen_ || !connecting_) return;
      asio::ip::tcp::socket socket = std::move(*connecting_);
      connecting_.reset();
      on_connected(gen, cec, std::move(socket));
    });
  }

  void start_periodic(std::chrono::nanoseconds interval, std::chrono::nanoseconds phase) {
    interval_ = interval;
    sending_ = true;
    next_send_ = Clock::now() + phase;
    arm_send_timer();
  }

  void start_window(std::size_t window) {
    window_ = window;
    sending_ = true;
    top_up();
  }

  void stop_sending() {
    sending_ = false;
    window_ = 0;
    send_timer_.cancel();
  }

  void mark_storm() {
    storm_mark_ = next_seq_;
    storm_acked_ = false;
    make_batch();
  }

  void make_batch() {
    const std::int64_t end_ns = platform::realtime_ns();
    const std::int64_t length = shard_.options.report_interval.count();
    unacked_.push_back({next_seq_++, platform::monotonic_ns(), end_ns - length, end_ns});
    if (unacked_.size() == 1) arm_ack_timer();
    pump();
  }

  void close() {
    closing_ = true;
    stop_sending();
    fail(false);
  }

  // The gate's turn came (or the agent no longer needs it).
  void slot_granted() {
    waiting_slot_ = false;
    if (closing_) return shard_.release_slot();
    holding_slot_ = true;
    connect();
  }

 private:
  struct Pending {
    std::uint64_t seq;
    std::int64_t made_ns;  // CLOCK_MONOTONIC
    std::int64_t start_ns, end_ns;
  };

  void on_connected(std::uint64_t gen, std::error_code ec, asio::ip::tcp::socket socket) {
    timer_.cancel();
    if (ec) {
      ++shard_.stats.connect_failures;
      fail(false);
      return;
    }
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    stream_ = platform::tls::TlsStream::create(std::move(socket), tls_, shard_.options.server_name);
    timer_.expires_after(shard_.options.handshake_timeout);
    timer_.async_wait([this, gen](std::error_code tec) {
      if (!tec && gen == gen_ && stream_ && !ready_) stream_->close();
    });
    stream_->async_handshake([this, gen](std::error_code hec) { on_handshake(gen, hec); });
  }

  void on_handshake(std::uint64_t gen, std::error_code ec) {
    if (gen != gen_) return;
    timer_.cancel();
    give_back_slot();
    if (ec) {
      ++shard_.stats.tls_failures;
      fail(false);
      return;
    }
    ++(stream_->resumed() ? shard_.stats.resumed_handshakes : shard_.stats.full_handshakes);
    connected_ = true;
    ++shard_.stats.connected_now;
    ready_ = true;
    reader_ = wire::FrameReader();
    sent_through_ = acked_through_;
    write(std::make_shared<std::vector<std::uint8_t>>(shard_.factory.hello_frame(id_)), 0);
    read(gen);
    if (!unacked_.empty()) arm_ack_timer();
  }

  // Writes one frame; seq 0 is the Hello.
  void write(std::shared_ptr<std::vector<std::uint8_t>> frame, std::uint64_t seq) {
    writing_ = true;
    const std::uint64_t gen = gen_;
    stream_->async_write(asio::buffer(*frame), [this, gen, frame, seq](std::error_code ec, std::size_t) {
      if (gen != gen_) return;
      writing_ = false;
      if (ec) {
        fail(true);
        return;
      }
      if (seq != 0) {
        sent_through_ = seq;
        ++shard_.stats.frames_sent;
      }
      pump();
    });
  }

  // Sends the next unacked batch not yet sent on this connection.
  void pump() {
    if (!ready_ || writing_ || unacked_.empty()) return;
    const std::uint64_t first = unacked_.front().seq;
    const std::uint64_t want = std::max(sent_through_ + 1, first);
    if (want > unacked_.back().seq) return;
    const Pending& p = unacked_[static_cast<std::size_t>(want - first)];
    write(std::make_shared<std::vector<std::uint8_t>>(shard_.factory.batch_frame(id_, p.seq, p.start_ns, p.end_ns)),
          p.seq);
  }

  void read(std::uint64_t gen) {
    stream_->async_read_some(asio::buffer(read_buffer_), [this, gen](std::error_code ec, std::size_t n) {
      if (gen != gen_) return;
      if (ec) {
        fail(true);
        return;
      }
      reader_.feed({read_buffer_.data(), n});
      for (;;) {
        const wire::FrameStatus status = reader_.next();
        if (status == wire::FrameStatus::kNeedMore) break;
        const wire::Ack* ack = status == wire::FrameStatus::kFrame ? reader_.frame()->message_as_Ack() : nullptr;
        if (ack == nullptr) {
          fail(true);
          return;
        }
        if (ack->status() == wire::AckStatus::Stored) {
          on_ack(ack->seq());
          continue;
        }
        if (ack->status() == wire::AckStatus::RetryLater) {
          ++shard_.stats.retry_later;
        } else {
          ++shard_.stats.rejected;
          shard_.stats.last_reject_reason = ack->reason() != nullptr ? ack->reason()->str() : "no reason";
        }
        fail(true);
        return;
      }
      read(gen);
    });
  }

  void on_ack(std::uint64_t seq) {
    const std::int64_t now = platform::monotonic_ns();
    const std::int64_t record_since = shard_.record_since_ns.load(std::memory_order_relaxed);
    while (!unacked_.empty() && unacked_.front().seq <= seq) {
      const Pending& p = unacked_.front();
      if (p.seq > acked_through_) {
        ++shard_.stats.batches_acked;
        shard_.stats.summaries_acked += shard_.factory.targets();
        if (p.made_ns >= record_since) shard_.stats.ack_latency.record_signed(now - p.made_ns);
      }
      unacked_.pop_front();
    }
    acked_through_ = std::max(acked_through_, seq);
    failures_ = 0;
    if (!ever_acked_) {
      ever_acked_ = true;
      ++shard_.stats.agents_acked;
    }
    if (storm_mark_ != 0 && !storm_acked_ && seq >= storm_mark_) {
      storm_acked_ = true;
      ++shard_.stats.storm_done;
      shard_.stats.storm_last_ack_ns = std::max(shard_.stats.storm_last_ack_ns, now);
    }
    arm_ack_timer();
    top_up();
  }

  void top_up() {
    while (sending_ && window_ > 0 && unacked_.size() < window_) make_batch();
  }

  void arm_send_timer() {
    send_timer_.expires_at(next_send_);
    send_timer_.async_wait([this](std::error_code ec) {
      if (ec || !sending_) return;
      make_batch();
      next_send_ += interval_;
      arm_send_timer();
    });
  }

  void arm_ack_timer() {
    if (unacked_.empty() || !ready_) {
      ack_timer_.cancel();
      return;
    }
    const std::uint64_t gen = gen_;
    ack_timer_.expires_after(shard_.options.ack_timeout);
    ack_timer_.async_wait([this, gen](std::error_code ec) {
      if (ec || gen != gen_ || !ready_) return;
      ++shard_.stats.ack_timeouts;
      fail(true);
    });
  }

  void give_back_slot() {
    if (!holding_slot_) return;
    holding_slot_ = false;
    shard_.release_slot();
  }

  void fail(bool was_session) {
    ++gen_;
    give_back_slot();
    if (connected_) {
      connected_ = false;
      --shard_.stats.connected_now;
      if (was_session) ++shard_.stats.disconnects;
    }
    ready_ = false;
    writing_ = false;
    timer_.cancel();
    ack_timer_.cancel();
    if (stream_) {
      stream_->close();
      stream_.reset();
    }
    if (connecting_) {
      std::error_code ignored;
      connecting_->close(ignored);
      connecting_.reset();
    }
    sent_through_ = acked_through_;
    if (closing_) return;
    ++failures_;
    const std::uint32_t exponent = std::min<std::uint32_t>(failures_, 20);
    const auto ceiling = std::min<std::int64_t>(shard_.options.backoff_max.count(),
                                                shard_.options.backoff_initial.count() << exponent);
    std::uniform_int_distribution<std::int64_t> pick(0, std::max<std::int64_t>(ceiling, 1));
    const std::uint64_t gen = gen_;
    timer_.expires_after(std::chrono::milliseconds(pick(rng_)));
    timer_.async_wait([this, gen](std::error_code ec) {
      if (!ec && gen == gen_) connect();
    });
  }

  Fleet::Shard& shard_;
  AgentIdentity id_;
  std::shared_ptr<platform::tls::TlsContext> tls_;
  asio::ip::address_v4 source_;
  asio::ip::tcp::endpoint collector_;
  asio::steady_timer timer_;  // connect and handshake timeouts, reconnect backoff
  bool holding_slot_ = false;  // one of the shard's handshake slots, from connect() to handshake end
  bool waiting_slot_ = false;
  asio::steady_timer send_timer_;
  asio::steady_timer ack_timer_;
  std::unique_ptr<asio::ip::tcp::socket> connecting_;
  std::shared_ptr<platform::tls::TlsStream> stream_;
  wire::FrameReader reader_;
  std::array<std::uint8_t, 1024> read_buffer_{};
  std::mt19937_64 rng_;
  std::uint64_t gen_ = 0;  // tells a stale callback (of a connection given up) from a current one
  std::uint32_t failures_ = 0;
  bool connected_ = false;
  bool ready_ = false;
  bool writing_ = false;
  bool closing_ = false;
  bool sending_ = false;
  bool ever_acked_ = false;
  std::uint64_t next_seq_ = 1;
  std::uint64_t acked_through_ = 0;
  std::uint64_t sent_through_ = 0;  // on this connection
  std::deque<Pending> unacked_;
  std::chrono::nanoseconds interval_{0};
  Clock::time_point next_send_{};
  std::size_t window_ = 0;
  std::uint64_t storm_mark_ = 0;
  bool storm_acked_ = false;
};

void Fleet::Shard::release_slot() {
  if (handshaking > 0) --handshaking;
  while (!waiting_for_slot.empty() && handshaking < handshake_slots) {
    SimAgent* next = waiting_for_slot.front();
    waiting_for_slot.pop_front();
    ++handshaking;
    asio::post(io, [next] { next->slot_granted(); });
  }
}

Fleet::Fleet(FleetOptions options, const BatchFactory& factory, std::vector<AgentSetup> agents)
    : options_(std::move(options)), factory_(factory), size_(agents.size()) {
  const std::size_t threads = std::max<std::size_t>(options_.io_threads, 1);
  for (std::size_t i = 0; i < threads; ++i) {
    shards_.push_back(std::make_unique<Shard>(options_, factory_, record_since_ns_));
    shards_.back()->handshake_slots = std::max<std::size_t>(options_.max_handshakes_in_flight / threads, 1);
  }
  for (std::size_t i = 0; i < agents.size(); ++i) {
    const auto x = static_cast<unsigned>(options_.first_source + i / std::max<std::size_t>(options_.agents_per_source, 1));
    const asio::ip::address_v4 source(asio::ip::address_v4::bytes_type{127, 0, 0, static_cast<unsigned char>(std::min(x, 254u))});
    Shard& shard = *shards_[i % threads];
    const asio::ip::tcp::endpoint collector =
        options_.collectors.empty() ? options_.collector : options_.collectors[i % options_.collectors.size()];
    shard.agents.push_back(std::make_unique<SimAgent>(shard, std::move(agents[i]), source, collector));
  }
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    s->thread = std::thread([s] { s->io.run(); });
  }
}

Fleet::~Fleet() { shutdown(); }

void Fleet::for_each_agent(const std::function<void(SimAgent&)>& f) {
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    asio::post(s->io, [s, f] {
      for (auto& a : s->agents) f(*a);
    });
  }
}

void Fleet::connect_all(std::chrono::milliseconds ramp) {
  const auto start = Clock::now();
  std::size_t i = 0;
  const std::size_t threads = shards_.size();
  // Interleaved over shards in fleet order, so source addresses fill up one after another.
  const std::size_t per_shard = (size_ + threads - 1) / threads;
  for (std::size_t k = 0; k < per_shard; ++k) {
    for (std::size_t t = 0; t < threads; ++t, ++i) {
      Shard* s = shards_[t].get();
      if (k >= s->agents.size()) continue;
      SimAgent* a = s->agents[k].get();
      std::this_thread::sleep_until(start + ramp * i / std::max<std::size_t>(size_, 1));
      asio::post(s->io, [a] { a->connect(); });
    }
  }
  std::this_thread::sleep_until(start + ramp);
}

void Fleet::start_periodic(std::chrono::nanoseconds interval, std::uint64_t seed) {
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    asio::post(s->io, [s, interval, seed] {
      std::mt19937_64 rng(seed ^ reinterpret_cast<std::uintptr_t>(s));
      std::uniform_int_distribution<std::int64_t> phase(0, interval.count() - 1);
      for (auto& a : s->agents) a->start_periodic(interval, std::chrono::nanoseconds(phase(rng)));
    });
  }
}

void Fleet::start_window(std::size_t window) {
  for_each_agent([window](SimAgent& a) { a.start_window(window); });
}

void Fleet::stop_sending() {
  for_each_agent([](SimAgent& a) { a.stop_sending(); });
}

void Fleet::send_one_each() {
  for_each_agent([](SimAgent& a) { a.make_batch(); });
}

void Fleet::mark_storm() {
  for_each_agent([](SimAgent& a) { a.mark_storm(); });
}

FleetStats Fleet::stats(bool reset_latency) {
  FleetStats total;
  std::vector<std::future<FleetStats>> parts;
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    auto promise = std::make_shared<std::promise<FleetStats>>();
    parts.push_back(promise->get_future());
    asio::post(s->io, [s, promise, reset_latency] {
      FleetStats copy = s->stats;
      copy.unacked_now = 0;
      for (auto& a : s->agents) copy.unacked_now += a->unacked();
      if (reset_latency) s->stats.ack_latency.reset();
      promise->set_value(std::move(copy));
    });
  }
  for (auto& p : parts) total.add(p.get());
  return total;
}

std::vector<AgentRecord> Fleet::records() {
  std::vector<AgentRecord> out;
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    std::promise<std::vector<AgentRecord>> promise;
    auto future = promise.get_future();
    asio::post(s->io, [s, &promise] {
      std::vector<AgentRecord> part;
      for (auto& a : s->agents) {
        part.push_back({a->identity().agent_id, a->identity().incarnation, a->acked_through(), a->made_through()});
      }
      promise.set_value(std::move(part));
    });
    for (auto& r : future.get()) out.push_back(std::move(r));
  }
  return out;
}

FleetStats Fleet::wait_until(const std::function<bool(const FleetStats&)>& done, std::chrono::milliseconds timeout,
                             bool* reached) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    FleetStats s = stats();
    const bool ok = done(s);
    if (ok || Clock::now() >= deadline) {
      if (reached != nullptr) *reached = ok;
      return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Fleet::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    std::promise<void> closed;
    auto future = closed.get_future();
    asio::post(s->io, [s, &closed] {
      for (auto& a : s->agents) a->close();
      closed.set_value();
    });
    future.wait();
    s->work.reset();
    s->io.stop();
    s->thread.join();
    s->agents.clear();
  }
}

}  // namespace vantage::fleet
