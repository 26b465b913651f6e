#include "agent/probes/tcp_prober.hpp"

#include <netinet/in.h>
#include <netinet/ip.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/bind_allocator.hpp>
#include <asio/error.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "agent/probes/handler_memory.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/clock.hpp"
#include "platform/random_seed.hpp"

namespace vantage::agent::probes {
namespace {

using platform::monotonic_ns;

bool valid(const TcpProberConfig& c) noexcept {
  if (!(c.jitter >= 0.0 && c.jitter <= 0.5)) {
    return false;
  }
  return std::all_of(c.targets.begin(), c.targets.end(), [](const TcpTarget& t) {
    return t.rate_per_s > 0.0 && t.rate_per_s <= kMaxTcpRatePerS && t.timeout.count() > 0 && t.dscp <= 63 &&
           t.endpoint.port() != 0;
  });
}

}  // namespace

struct TcpProber::Slot {
  explicit Slot(asio::io_context& io) : socket(io), timer(io) {}
  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  HandlerMemory connect_memory;
  HandlerMemory timer_memory;
  Target* target = nullptr;
  std::uint64_t seq = 0;
  std::int64_t send_ns = 0;
  int pending = 0;    // outstanding connect + timer operations; the slot is free at 0
  bool done = false;  // the outcome of this attempt is decided; late completions are ignored
};

struct TcpProber::Target {
  TcpTarget config;
  std::uint64_t next_seq = 0;
  std::vector<std::unique_ptr<Slot>> slots;
};

TcpProber::TcpProber(asio::io_context& io, TcpProberConfig config, EventRing& ring)
    : io_(io),
      config_(std::move(config)),
      ring_(ring),
      schedule_timer_(io) {}

TcpProber::~TcpProber() = default;

platform::Status TcpProber::start() {
  if (!valid(config_)) {
    return platform::Status::error("invalid configuration (jitter, or a target's rate, timeout, DSCP or port)");
  }
  const std::int64_t now = monotonic_ns();
  targets_.clear();
  targets_.reserve(config_.targets.size());
  const SlotGrid grid = config_.grid.for_targets(config_.targets);
  schedule_.reset(config_.jitter, platform::random_seed(), grid);
  schedule_.reserve(config_.targets.size());
  for (const TcpTarget& t : config_.targets) {
    auto target = std::make_unique<Target>();
    target->config = t;
    if (const std::size_t i = schedule_.add(t.rate_per_s, now); !t.resolved) {
      schedule_.set_active(i, false, now);
    }
    // Enough slots for every connect that can still be within its timeout, plus headroom for
    // jitter; a connect's slot is reused only once both of its operations have completed.
    const double in_flight = std::ceil(t.rate_per_s * std::chrono::duration<double>(t.timeout).count());
    const std::size_t slots = std::clamp<std::size_t>(static_cast<std::size_t>(std::min(in_flight, 1e6)) + 2,
                                                      1, kMaxTcpSlotsPerTarget);
    target->slots.reserve(slots);
    for (std::size_t i = 0; i < slots; ++i) {
      target->slots.push_back(std::make_unique<Slot>(io_));
      target->slots.back()->target = target.get();
    }
    targets_.push_back(std::move(target));
  }
  stopping_ = false;
  sending_stopped_ = false;
  if (!targets_.empty()) {
    arm_schedule();
  }
  return platform::Status();
}

void TcpProber::stop() {
  asio::post(io_, [this] {
    stopping_ = true;
    schedule_timer_.cancel();
    for (auto& target : targets_) {
      for (auto& slot : target->slots) {
        if (slot->pending > 0) {
          slot->done = true;
          std::error_code ignored;
          slot->socket.close(ignored);
          slot->timer.cancel();
        }
      }
    }
  });
}

void TcpProber::set_address(std::size_t position, std::optional<asio::ip::address> address,
                       std::function<void(bool probed)> applied) {
  asio::post(io_, [this, position, address, applied = std::move(applied)] {
    if (stopping_ || position >= targets_.size()) {
      return;
    }
    Target& target = *targets_[position];
    target.config.resolved = address.has_value();
    if (address) {
      target.config.endpoint.address(*address);
    }
    // Connects in flight to the old address finish as they would have.
    schedule_.set_active(position, address.has_value(), monotonic_ns());
    if (!sending_stopped_) {
      schedule_timer_.cancel();
      arm_schedule();
    }
    if (applied) applied(address.has_value());
  });
}

void TcpProber::stop_sending() {
  asio::post(io_, [this] {
    sending_stopped_ = true;
    schedule_timer_.cancel();
  });
}

TcpProberCounters TcpProber::counters() const noexcept {
  return snapshot_of<TcpProberCounters>(sent_, established_, refused_, connect_errors_, timeouts_,
                                        open_errors_, slots_busy_, ring_full_);
}

void TcpProber::arm_schedule() {
  schedule_timer_.arm(
      schedule_, [this] { return !stopping_ && !sending_stopped_; },
      [this](std::size_t i, std::int64_t now) { launch(*targets_[i], now); });
}

void TcpProber::launch(Target& target, std::int64_t now_ns) {
  const auto free_slot = std::find_if(target.slots.begin(), target.slots.end(),
                                      [](const std::unique_ptr<Slot>& s) { return s->pending == 0; });
  if (free_slot == target.slots.end()) {
    // Skipped without a kSent, so the aggregator sees a lower rate rather than false loss.
    slots_busy_.bump();
    return;
  }
  Slot& slot = **free_slot;
  ProbeEvent event;
  event.target = target.config.target;
  event.protocol = ProbeProtocol::kTcpConnect;
  event.seq = target.next_seq++;

  const asio::ip::tcp::endpoint& endpoint = target.config.endpoint;
  std::error_code ec;
  slot.socket.open(endpoint.protocol(), ec);
  if (ec) {
    open_errors_.bump();
    event.kind = ProbeEventKind::kSendError;
    event.send_ns = now_ns;
    emit(event);
    return;
  }
  // Best effort: a host that refuses the option still gets probed, just unmarked.
  const int tos = target.config.dscp << 2;
  if (endpoint.address().is_v6()) {
    ::setsockopt(slot.socket.native_handle(), IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos));
  } else {
    ::setsockopt(slot.socket.native_handle(), IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
  }

  slot.seq = event.seq;
  slot.done = false;
  slot.pending = 2;
  Slot* const s = &slot;
  // Stamped right before async_connect, whose initiation issues the non-blocking connect()
  // (the SYN) at once; its completion is always posted, so the kSent emitted after it still
  // precedes the outcome in the ring.
  slot.send_ns = monotonic_ns();
  slot.socket.async_connect(endpoint, with_memory(slot.connect_memory, [this, s](const std::error_code& e) {
                              on_connected(*s, e);
                            }));
  slot.timer.expires_at(platform::steady_time(slot.send_ns + target.config.timeout.count()));
  slot.timer.async_wait(
      with_memory(slot.timer_memory, [this, s](const std::error_code& e) { on_timeout(*s, e); }));
  event.kind = ProbeEventKind::kSent;
  event.send_ns = slot.send_ns;
  sent_.bump();
  emit(event);
}

void TcpProber::on_connected(Slot& slot, const std::error_code& ec) {
  --slot.pending;
  if (slot.done) {
    // Timed out or stopped first; a connect that completed in the same loop iteration as its
    // timeout is still a timeout, so the reported RTT never exceeds the timeout.
    return;
  }
  slot.done = true;
  ProbeEvent event;
  event.target = slot.target->config.target;
  event.protocol = ProbeProtocol::kTcpConnect;
  event.seq = slot.seq;
  event.send_ns = slot.send_ns;
  if (!ec) {
    // Read when the io_context thread sees the socket writable, so a busy thread inflates the
    // RTT; TCP offers no kernel timestamp for the SYN-ACK to a connecting socket.
    event.kind = ProbeEventKind::kReply;
    event.receive_ns = monotonic_ns();
    established_.bump();
    emit(event);
  } else if (ec != asio::error::operation_aborted) {
    event.kind = ProbeEventKind::kSendError;
    if (ec == asio::error::connection_refused || ec == asio::error::connection_reset) {
      refused_.bump();
    } else {
      connect_errors_.bump();
    }
    emit(event);
  }
  // An ordinary close (FIN), not SO_LINGER 0 (RST): the TIME_WAIT it leaves on this host costs
  // a small kernel record per probe for 60 s and is keyed by the target's address and port,
  // so ports run short only beyond ~400 probes/s to one target; an RST would instead show
  // up as an aborted connection in the target's logs and alarms for every probe.
  std::error_code ignored;
  slot.socket.close(ignored);
  slot.timer.cancel();
}

void TcpProber::on_timeout(Slot& slot, const std::error_code& ec) {
  --slot.pending;
  if (ec == asio::error::operation_aborted || slot.done) {
    return;
  }
  slot.done = true;
  timeouts_.bump();
  // Closing aborts the pending connect (its handler sees operation_aborted and the slot frees)
  // and drops the half-open socket, so targets that never answer cannot pile up descriptors.
  std::error_code ignored;
  slot.socket.close(ignored);
}

void TcpProber::emit(const ProbeEvent& event) noexcept {
  if (!ring_.try_push(event)) {
    ring_full_.bump();
  }
}

}  // namespace vantage::agent::probes
