#include "agent/probes/udp_prober.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <asio/ip/address.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "platform/random_seed.hpp"
#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

// Datagrams handled per wakeup before re-arming the wait, as in the Reflector: a burst is
// drained in one go without starving the timer on the same io_context.
constexpr int kMaxBatch = 64;
constexpr double kMaxRatePerS = 100'000.0;
// Gaps of uniform [0.5, 1.5) mean intervals.
constexpr double kJitter = 0.5;

using platform::clock_ns;

bool valid(const UdpProbeTarget& t) noexcept {
  const bool stamp = t.format == UdpProbeFormat::kStamp;
  const std::size_t min_size = stamp ? stamp::base_size(t.stamp.mode()) : kProbeHeaderSize;
  const bool key_ok = t.stamp.key.empty() || (t.stamp.key.size() >= stamp::kMinKeySize &&
                                               t.stamp.key.size() <= stamp::kMaxKeySize);
  return std::isfinite(t.rate_per_s) && t.rate_per_s > 0 && t.rate_per_s <= kMaxRatePerS &&
         t.payload_size >= min_size && t.payload_size <= kMaxProbeSize && t.dscp < 64 &&
         t.endpoint.port() != 0 && t.paths >= 1 && t.paths <= kMaxUdpPaths && (!stamp || (t.paths == 1 && key_ok));
}

// a - b, saturating: timestamps from a peer may be anything.
std::int64_t difference(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t out = 0;
  if (__builtin_sub_overflow(a, b, &out)) {
    return a < b ? std::numeric_limits<std::int64_t>::min() : std::numeric_limits<std::int64_t>::max();
  }
  return out;
}

stamp::TimestampFormat format_of(const platform::ErrorEstimate& e) noexcept {
  return e.ptp_format ? stamp::TimestampFormat::kPtp : stamp::TimestampFormat::kNtp;
}

// How many batches one wakeup reads from a socket at most: until the queue is empty, in
// practice (the slot holds at most SlotGrid::kMaxProbesPerSlot probes on average); the bound
// only keeps a flood of foreign datagrams from holding the thread.
constexpr int kMaxBatchesPerWake = 256;
constexpr std::size_t kBatchSize = 16;

}  // namespace

std::uint16_t stamp_ssid(std::uint64_t sender_id, std::uint32_t index) noexcept {
  // splitmix64's finaliser: every input bit moves the result.
  std::uint64_t z = sender_id + 0x9e3779b97f4a7c15ULL * (std::uint64_t{index} + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<std::uint16_t>(1 + z % 65535);  // RFC 8972: 0 is not an SSID
}

UdpProber::UdpProber(asio::io_context& io, UdpProberConfig config, EventRing& events)
    : io_(io), config_(std::move(config)), events_(events), timer_(io) {}

UdpProber::~UdpProber() = default;

platform::Status UdpProber::start() {
  std::size_t max_payload = kProbeHeaderSize;
  bool any_v4 = false;
  bool any_v6 = false;
  std::size_t pool_size = 1;
  for (std::size_t i = 0; i < config_.targets.size(); ++i) {
    const UdpProbeTarget& t = config_.targets[i];
    if (!valid(t)) {
      return platform::Status::error("invalid target " + std::to_string(i + 1) +
                                     " (rate, payload size, DSCP, paths, STAMP key or port 0)");
    }
    max_payload = std::max(max_payload, t.payload_size);
    pool_size = std::max<std::size_t>(pool_size, t.paths);
    if (!t.resolved) {
      continue;  // no endpoint yet
    }
    // Replies are told apart by source endpoint only.
    for (std::size_t j = 0; j < i; ++j) {
      if (config_.targets[j].resolved && config_.targets[j].endpoint == t.endpoint) {
        return platform::Status::error("target " + std::to_string(i + 1) + " listed twice");
      }
    }
    (t.endpoint.address().is_v6() ? any_v6 : any_v4) = true;
  }

  pool_size_ = pool_size;
  target_v6_ = std::make_unique<std::atomic<bool>[]>(config_.targets.size());
  for (std::size_t i = 0; i < config_.targets.size(); ++i) {
    target_v6_[i].store(config_.targets[i].endpoint.address().is_v6(), std::memory_order_relaxed);
  }
  std::error_code ec;
  if (any_v4) {
    ec = open_pool(false);
  }
  if (!ec && any_v6) {
    ec = open_pool(true);
  }
  if (ec) {
    close_pools();
    return platform::Status::error(ec.message(), platform::Errc::kIo);
  }
  bool all_stamped = any_v4 || any_v6;
  for (const Pool* p : {&v4_, &v6_}) {
    for (const auto& s : *p) all_stamped = all_stamped && s->kernel_timestamps;
  }
  kernel_timestamps_.store(all_stamped, std::memory_order_relaxed);

  send_buffer_.assign(max_payload, std::byte{0});
  receive_buffer_.assign(max_payload + 1, std::byte{0});
  const SlotGrid grid = config_.grid.for_targets(config_.targets);
  schedule_.reset(kJitter, config_.jitter_seed != 0 ? config_.jitter_seed : platform::random_seed(), grid);
  schedule_.reserve(config_.targets.size());
  reply_wait_.resize(config_.targets.size());

  const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
  targets_.clear();
  targets_.reserve(config_.targets.size());
  for (const UdpProbeTarget& t : config_.targets) {
    TargetState s;
    s.config = t;
    s.first_seq = config_.first_seq;
    if (t.format == UdpProbeFormat::kStamp && t.stamp.stateful_reflector == StampStatefulReflector::kAuto &&
        config_.first_seq == 0) {
      s.first_seq = (platform::random_seed() & 0xffff'ffffu) | 1u;
    }
    s.next_seq = s.first_seq;
    if (t.format == UdpProbeFormat::kStamp) {
      s.ssid = t.stamp.ssid != 0 ? t.stamp.ssid : stamp_ssid(config_.sender_id, t.index);
      s.stamp_stateful = t.stamp.stateful_reflector == StampStatefulReflector::kYes;
    }
    if (const std::size_t i = schedule_.add(t.rate_per_s, now); !t.resolved) {
      schedule_.set_active(i, false, now);
    }
    targets_.push_back(s);
  }
  rebuild_endpoints();

  stopping_ = false;
  sending_stopped_ = false;
  for (Pool* p : {&v4_, &v6_}) {
    for (auto& s : *p) {
      s->batched = s->kernel_timestamps;
      if (s->batched) {
        if (batch_.capacity() == 0) batch_.resize(kBatchSize, receive_buffer_.size());
      } else {
        arm_read(*s);
      }
    }
  }
  arm_timer();
  return platform::Status();
}

void UdpProber::stop() {
  asio::post(io_, [this] {
    stopping_ = true;
    timer_.cancel();
    close_pools();
  });
}

void UdpProber::set_address(std::size_t position, std::optional<asio::ip::address> address,
                       std::function<void(bool probed)> applied) {
  asio::post(io_, [this, position, address, applied = std::move(applied)] {
    if (stopping_ || position >= targets_.size()) {
      return;
    }
    TargetState& t = targets_[position];
    std::optional<asio::ip::address> a = address;
    if (a && a->is_v6() && a->to_v6().is_v4_mapped()) {
      a = asio::ip::make_address_v4(asio::ip::v4_mapped, a->to_v6());
    }
    if (a) {
      Pool& p = pool(a->is_v6());
      if (p.empty()) {
        if (open_pool(a->is_v6())) {
          send_errors_.bump();  // retried at the next change or refresh of the name
          a.reset();
        } else {
          for (auto& s : p) {
            s->batched = s->kernel_timestamps && !sending_stopped_;
            if (s->batched) {
              if (batch_.capacity() == 0) batch_.resize(kBatchSize, receive_buffer_.size());
            } else {
              arm_read(*s);
            }
          }
        }
      }
    }
    t.config.resolved = a.has_value();
    if (a) {
      t.config.endpoint.address(*a);
      target_v6_[position].store(a->is_v6(), std::memory_order_relaxed);
    }
    rebuild_endpoints();
    const bool more = t.config.count == 0 || t.next_seq - t.first_seq < t.config.count;
    schedule_.set_active(position, a.has_value() && more, clock_ns(CLOCK_MONOTONIC));
    if (!a) reply_wait_.forget(position);
    if (!sending_stopped_) {
      timer_.cancel();
      arm_timer();
    }
    if (applied) applied(a.has_value());
  });
}

void UdpProber::stop_sending() {
  asio::post(io_, [this] {
    sending_stopped_ = true;
    timer_.cancel();
    // The replies in flight are read as they arrive from now on (no more wakeups to read at).
    for (Pool* p : {&v4_, &v6_}) {
      for (auto& s : *p) {
        if (s->batched && s->socket.is_open()) {
          s->batched = false;
          arm_read(*s);
        }
      }
    }
  });
}

std::uint16_t UdpProber::path_source_port(std::size_t position, std::size_t path) const noexcept {
  if (!target_v6_ || position >= config_.targets.size() || path >= kMaxUdpPaths) return 0;
  const bool v6 = target_v6_[position].load(std::memory_order_relaxed);
  return ports_[v6 ? 1 : 0][path].load(std::memory_order_relaxed);
}

std::error_code UdpProber::open_pool(bool v6) {
  Pool& p = pool(v6);
  p.clear();
  p.reserve(pool_size_);
  for (std::size_t i = 0; i < pool_size_; ++i) {
    p.push_back(std::make_unique<Socket>(io_, static_cast<std::uint16_t>(i)));
    if (const std::error_code ec = open(*p.back(), v6)) {
      for (auto& s : p) {
        std::error_code ignored;
        s->socket.close(ignored);
      }
      p.clear();
      return ec;
    }
    std::error_code ignored;
    ports_[v6 ? 1 : 0][i].store(p.back()->socket.local_endpoint(ignored).port(), std::memory_order_relaxed);
  }
  return {};
}

void UdpProber::close_pools() {
  // Closed, not destroyed: a read wait still queued on the io_context refers to its Socket.
  for (Pool* p : {&v4_, &v6_}) {
    for (auto& s : *p) {
      std::error_code ignored;
      s->socket.close(ignored);
    }
  }
}

UdpProberCounters UdpProber::counters() const noexcept {
  return snapshot_of<UdpProberCounters>(sent_, send_errors_, received_, replies_, dropped_foreign_,
                                        dropped_malformed_, dropped_unexpected_, invalid_dwell_,
                                        receive_errors_, dscp_errors_, events_dropped_, dropped_auth_);
}

std::error_code UdpProber::open(Socket& s, bool v6) {
  std::error_code ec;
  const asio::ip::udp::endpoint local(
      v6 ? asio::ip::address(asio::ip::address_v6::any()) : asio::ip::address(asio::ip::address_v4::any()),
      0);
  s.socket.open(local.protocol(), ec);
  // IPv6-only, so IPv4 replies arrive on the IPv4 socket in their plain form.
  if (!ec && v6) {
    s.socket.set_option(asio::ip::v6_only(true), ec);
  }
  if (!ec) {
    s.socket.bind(local, ec);
  }
  if (!ec) {
    s.socket.non_blocking(true, ec);
  }
  if (!ec && v6) {
    // The kernel's flow label hashes the flow, source port included, so each path gets its own
    // label for routers that hash on it; Linux's default (net.ipv6.auto_flowlabels=1) already
    // does, this also covers the opt-in setting. Refused by an older kernel: ports alone then.
    const int one = 1;
    (void)::setsockopt(s.socket.native_handle(), IPPROTO_IPV6, IPV6_AUTOFLOWLABEL, &one, sizeof(one));
  }
  if (ec) {
    return ec;
  }
  s.kernel_timestamps =
      config_.kernel_timestamps && platform::enable_kernel_rx_timestamps(s.socket.native_handle());
  s.dscp = 0;
  return {};
}

void UdpProber::arm_timer() {
  if (stopping_ || sending_stopped_) {
    return;
  }
  timer_.arm(
      schedule_, [this] { return !stopping_ && !sending_stopped_; },
      [this](std::size_t i, std::int64_t now) {
        TargetState& t = targets_[i];
        send_probe(t, now);
        if (t.config.count != 0 && t.next_seq - t.first_seq >= t.config.count) {
          schedule_.finish(i);
        }
      },
      &reads_);
}

std::size_t UdpProber::BatchedReads::read(std::int64_t) {
  std::size_t n = 0;
  for (UdpProber::Pool* p : {&prober->v4_, &prober->v6_}) {
    for (auto& s : *p) {
      if (s->batched && s->socket.is_open()) n += prober->read_batch(*s);
    }
  }
  return n;
}

std::int64_t UdpProber::BatchedReads::next_read(std::int64_t now_ns, std::size_t sent, std::size_t read) {
  // A pool's sockets are batched or not together.
  const bool any = (!prober->v4_.empty() && prober->v4_[0]->batched && prober->v4_[0]->socket.is_open()) ||
                   (!prober->v6_.empty() && prober->v6_[0]->batched && prober->v6_[0]->socket.is_open());
  if (!any) return std::numeric_limits<std::int64_t>::max();
  return prober->reply_wait_.next_read(now_ns, sent, read, prober->schedule_.grid().slot_ns);
}

void UdpProber::rebuild_endpoints() {
  std::vector<std::optional<EndpointKey>> keys;
  keys.reserve(targets_.size());
  for (const TargetState& t : targets_) {
    if (!t.config.resolved) {
      keys.emplace_back(std::nullopt);
      continue;
    }
    sockaddr_storage ss{};
    std::memcpy(&ss, t.config.endpoint.data(), std::min<std::size_t>(t.config.endpoint.size(), sizeof(ss)));
    keys.push_back(EndpointKey::of(ss));
  }
  endpoints_.rebuild(keys);
}

void UdpProber::send_probe(TargetState& t, std::int64_t now_ns) {
  const bool v6 = t.config.endpoint.address().is_v6();
  Pool& p = pool(v6);
  if (p.empty()) {  // cannot happen for a resolved target; counted rather than trusted
    send_errors_.bump();
    return;
  }
  const std::uint64_t seq = t.next_seq;
  Socket& s = *p[t.config.paths > 1 ? static_cast<std::size_t>(seq % t.config.paths) : 0];
  const int dscp = t.config.dscp;
  if (s.dscp != dscp) {
    const int tos = dscp << 2;  // DSCP is the upper six bits; ECN bits stay 0
    if (::setsockopt(s.socket.native_handle(), v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TCLASS : IP_TOS,
                     &tos, sizeof(tos)) == 0) {
      s.dscp = dscp;
    } else {
      dscp_errors_.bump();
    }
  }

  ProbeEvent event;
  event.target = t.config.index;
  event.seq = t.next_seq++;

  std::size_t size = 0;
  if (t.config.format == UdpProbeFormat::kStamp) {
    event.protocol = ProbeProtocol::kStamp;
    size = encode_stamp(t, event.seq, event.send_ns);
  } else {
    event.protocol = ProbeProtocol::kUdpEcho;
    ProbeHeader header;
    header.sequence = event.seq;
    header.sender_id = config_.sender_id;
    // Room for the clock extension: the reflector is asked for its wall-clock stamps (one-way delay).
    const bool one_way = t.config.payload_size >= kClockProbeSize;
    const std::uint16_t error_estimate =
        one_way ? platform::encode_error_estimate(platform::error_estimate_of(platform::ClockStateCell::instance().current()))
                : 0;
    // Read as late as possible so the RTT excludes encoding; the few bytes written after the
    // read are the send times themselves.
    event.send_ns = clock_ns(CLOCK_MONOTONIC);
    const std::int64_t wall_ns = one_way ? clock_ns(CLOCK_REALTIME) : 0;
    header.send_ns = static_cast<std::uint64_t>(event.send_ns);
    size = encode_request(header, send_buffer_, t.config.payload_size);
    if (one_way && size != 0) {
      (void)write_clock_request(std::span<std::byte>(send_buffer_.data(), size), wall_ns, error_estimate);
    }
  }
  const ssize_t n =
      size == 0 ? -1
                : ::sendto(s.socket.native_handle(), send_buffer_.data(), size, MSG_DONTWAIT,
                           t.config.endpoint.data(), static_cast<socklen_t>(t.config.endpoint.size()));
  if (n == static_cast<ssize_t>(size) && size != 0) {
    sent_.bump();
    event.kind = ProbeEventKind::kSent;
    if (s.batched) {  // a socket read on arrival needs no read-only wakeups
      reply_wait_.sent(static_cast<std::size_t>(&t - targets_.data()), event.seq, now_ns, t.config.timeout.count());
    }
  } else {
    send_errors_.bump();
    event.kind = ProbeEventKind::kSendError;
  }
  emit(event);
}

std::size_t UdpProber::encode_stamp(const TargetState& t, std::uint64_t seq, std::int64_t& send_ns) {
  const StampSenderOptions& o = t.config.stamp;
  const stamp::Mode mode = o.mode();
  const std::size_t base = stamp::base_size(mode);
  const std::size_t size = t.config.payload_size;
  if (size < base || size > send_buffer_.size()) return 0;
  const std::span<std::byte> out(send_buffer_.data(), size);
  // MBZ and padding are zero (RFC 8762 §4.2.1); the buffer is shared by every target.
  std::fill(out.begin(), out.end(), std::byte{0});
  if (size - base >= stamp::kTlvHeaderSize) {
    (void)stamp::encode_tlv_header(out.subspan(base), 0, stamp::kTlvExtraPadding,
                                   static_cast<std::uint16_t>(size - base - stamp::kTlvHeaderSize));
  }
  const platform::ClockState clock = platform::ClockStateCell::instance().current();
  stamp::SenderPacket p;
  p.seq = static_cast<std::uint32_t>(seq);  // the wire's 32 bits; replies are widened again
  p.ssid = t.ssid;
  p.error_estimate = platform::encode_error_estimate(
      platform::error_estimate_of(clock, o.timestamp_format == stamp::TimestampFormat::kPtp));
  // Both clocks as late as possible: the RTT (monotonic) and the forward delay (realtime)
  // exclude encoding; only the timestamp field and the HMAC are written after them.
  send_ns = clock_ns(CLOCK_MONOTONIC);
  p.timestamp = stamp::wire_timestamp(clock_ns(CLOCK_REALTIME), o.timestamp_format);
  if (!stamp::encode_sender(out, mode, p)) return 0;
  if (mode == stamp::Mode::kAuthenticated && !stamp::sign(out, o.key)) return 0;
  return size;
}

void UdpProber::arm_read(Socket& s) {
  s.socket.async_wait(asio::ip::udp::socket::wait_read, [this, &s](const std::error_code& ec) {
    // As in the Reflector: any error other than operation_aborted would repeat if re-armed.
    if (ec || stopping_) {
      return;
    }
    on_readable(s);
    if (!stopping_ && s.socket.is_open()) {
      arm_read(s);
    }
  });
}

void UdpProber::on_readable(Socket& s) {
  for (int i = 0; i < kMaxBatch; ++i) {
    const platform::ReceivedDatagram d = platform::receive_datagram(
        s.socket.native_handle(), receive_buffer_, peer_,
        s.kernel_timestamps ? std::span<unsigned char>(control_) : std::span<unsigned char>());
    if (d.status != platform::ReceivedDatagram::Status::kDatagram) {
      if (d.status == platform::ReceivedDatagram::Status::kError) {
        receive_errors_.bump();
      }
      return;
    }
    received_.bump();
    // Read before the monotonic read time, as monotonic_rx_time() does, and always: the
    // wall-clock arrival time of a reply without a kernel stamp is the read time plus it.
    const std::int64_t offset = platform::realtime_offset_ns();
    handle_reply(std::span<const std::byte>(receive_buffer_.data(), d.truncated ? receive_buffer_.size() : d.size),
                 peer_,
                 platform::monotonic_rx_time(s.kernel_timestamps ? d.kernel_realtime_ns : std::nullopt, offset,
                                             clock_ns(CLOCK_MONOTONIC)),
                 offset, s.path);
  }
}

std::size_t UdpProber::read_batch(Socket& s) {
  std::size_t replies = 0;
  // One realtime/monotonic offset for the whole wakeup: reads a few microseconds apart share it.
  const std::int64_t offset = platform::realtime_offset_ns();
  for (int b = 0; b < kMaxBatchesPerWake; ++b) {
    const platform::ReceivedDatagram::Status status = batch_.receive(s.socket.native_handle(), true);
    if (status != platform::ReceivedDatagram::Status::kDatagram) {
      if (status == platform::ReceivedDatagram::Status::kError) {
        receive_errors_.bump();
      }
      break;
    }
    const std::int64_t read_ns = clock_ns(CLOCK_MONOTONIC);
    for (std::size_t i = 0; i < batch_.count(); ++i) {
      received_.bump();
      replies += handle_reply(batch_.data(i), batch_.peer(i),
                              platform::monotonic_rx_time(batch_.kernel_realtime_ns(i), offset, read_ns), offset,
                              s.path)
                     ? 1
                     : 0;
    }
    if (batch_.count() < batch_.capacity()) break;  // the queue is empty
  }
  return replies;
}

bool UdpProber::handle_reply(std::span<const std::byte> packet, const sockaddr_storage& peer, platform::RxTime rx,
                             std::int64_t realtime_offset, std::uint16_t path) {
  const std::optional<EndpointKey> key = EndpointKey::of(peer);
  const std::uint32_t position = key ? endpoints_.find(*key) : EndpointTable::kNone;
  if (position != EndpointTable::kNone && targets_[position].config.format == UdpProbeFormat::kStamp) {
    return handle_stamp_reply(packet, position, rx, realtime_offset);
  }
  ProbeHeader reply;
  if (const ProbeDecodeStatus status = decode_probe(packet, ProbeKind::kReply, reply, receive_buffer_.size() - 1);
      status != ProbeDecodeStatus::kOk) {
    (is_malformed_probe(status) ? dropped_malformed_ : dropped_foreign_).bump();
    return false;
  }
  if (position == EndpointTable::kNone) {
    dropped_foreign_.bump();
    return false;
  }
  const TargetState* target = &targets_[position];
  const std::uint64_t expected_path = target->config.paths > 1 ? reply.sequence % target->config.paths : 0;
  if (reply.sender_id != config_.sender_id || reply.sequence >= target->next_seq ||
      packet.size() != target->config.payload_size || expected_path != path) {
    dropped_unexpected_.bump();
    return false;
  }
  reply_wait_.answered(position, reply.sequence);

  ProbeEvent event;
  event.target = target->config.index;
  event.protocol = ProbeProtocol::kUdpEcho;
  event.kind = ProbeEventKind::kReply;
  event.seq = reply.sequence;
  event.send_ns = static_cast<std::int64_t>(reply.send_ns);
  rx.not_before(event.send_ns);
  event.receive_ns = rx.ns;
  event.kernel_rx_timestamp = rx.kernel;
  event.reflector_kernel_rx = (reply.flags & kFlagKernelRxTimestamp) != 0;
  // Unsigned difference, then signed: a reflector clock step shows up as negative, not as
  // an overflow.
  const auto dwell = static_cast<std::int64_t>(reply.reflector_tx_ns - reply.reflector_rx_ns);
  const auto rtt = static_cast<std::int64_t>(static_cast<std::uint64_t>(event.receive_ns) - reply.send_ns);
  if (dwell < 0 || dwell > rtt) {
    invalid_dwell_.bump();
  } else {
    event.reflector_dwell_ns = dwell;
  }
  event.reflector_boot = reply.reflector_boot;
  event.session_id = reply.session_id;
  event.session_rx = reply.session_rx;
  // The wall-clock arrival: the kernel's realtime stamp itself, else the read time moved by the
  // offset taken with it.
  fill_one_way(event, packet, event.receive_ns + realtime_offset);
  replies_.bump();
  emit(event);
  return true;
}

bool UdpProber::handle_stamp_reply(std::span<const std::byte> packet, std::uint32_t position, platform::RxTime rx,
                                   std::int64_t realtime_offset) {
  TargetState& target = targets_[position];
  const StampSenderOptions& o = target.config.stamp;
  const stamp::Mode mode = o.mode();
  if (packet.size() >= receive_buffer_.size()) {  // cut short by the buffer: longer than any probe
    dropped_malformed_.bump();
    return false;
  }
  if (mode == stamp::Mode::kAuthenticated &&
      (packet.size() < stamp::kAuthenticatedSize || !stamp::verify_hmac(packet, o.key))) {
    dropped_auth_.bump();
    return false;
  }
  stamp::ReflectorPacket reply;
  if (!stamp::decode_reflector(packet, mode, reply)) {
    dropped_malformed_.bump();
    return false;
  }
  // The TWAMP-Light layout (41..43 bytes) has no SSID; a plain RFC 8762 reflector leaves it 0.
  const bool has_ssid = mode == stamp::Mode::kAuthenticated || packet.size() >= stamp::kUnauthenticatedSize;
  // The latest seq sent with these low 32 bits: replies come back within a timeout, far less
  // than 2^32 probes later.
  const std::uint64_t last = target.next_seq - 1;
  const std::uint32_t back = static_cast<std::uint32_t>(last) - reply.sender_seq;
  if (target.next_seq == target.first_seq || back > last - target.first_seq ||
      (has_ssid && reply.ssid != 0 && reply.ssid != target.ssid)) {
    dropped_unexpected_.bump();
    return false;
  }
  const std::uint64_t seq = last - back;
  reply_wait_.answered(position, seq);

  ProbeEvent event;
  event.target = target.config.index;
  event.protocol = ProbeProtocol::kStamp;
  event.kind = ProbeEventKind::kReply;
  event.seq = seq;
  event.send_ns = 0;
  event.send_ns_from_slot = true;
  event.receive_ns = rx.ns;
  event.kernel_rx_timestamp = rx.kernel;

  // T1 in the format the sender's echoed Error Estimate names, T2 and T3 in the reflector's.
  const platform::ErrorEstimate reflector = platform::decode_error_estimate(reply.error_estimate);
  const platform::ErrorEstimate sender = platform::decode_error_estimate(reply.sender_error_estimate);
  const std::int64_t t1 = stamp::realtime_ns_from_wire(reply.sender_timestamp, format_of(sender));
  const std::int64_t t2 = stamp::realtime_ns_from_wire(reply.receive_timestamp, format_of(reflector));
  const std::int64_t t3 = stamp::realtime_ns_from_wire(reply.timestamp, format_of(reflector));
  const std::int64_t t4 = rx.ns + realtime_offset;  // the kernel's realtime stamp itself, when it is one
  const std::int64_t dwell = difference(t3, t2);
  if (dwell < 0 || dwell > difference(t4, t1)) {
    invalid_dwell_.bump();
  } else {
    event.reflector_dwell_ns = dwell;
  }

  if (o.stateful_reflector == StampStatefulReflector::kAuto && reply.seq != reply.sender_seq) {
    target.stamp_stateful = true;  // a stateless reflector echoes the sender's seq
  }
  event.reflector_boot = 0;
  event.session_id = target.stamp_stateful ? 1 : 0;
  event.session_rx = reply.seq + 1;

  const platform::ClockState clock = platform::ClockStateCell::instance().current();
  event.one_way = true;
  event.forward_ns = difference(t2, t1);
  event.backward_ns = difference(t4, t3);
  event.sender_synchronised = clock.synchronised;
  event.sender_error_ns = clock.maximum_error_ns;
  event.reflector_synchronised = reflector.synchronised;
  event.reflector_error_ns = reflector.error_ns;
  replies_.bump();
  emit(event);
  return true;
}

void UdpProber::emit(const ProbeEvent& event) noexcept {
  // Never wait for the consumer: a full ring costs this one event, counted.
  if (!events_.try_push(event)) {
    events_dropped_.bump();
  }
}

}  // namespace vantage::agent::probes
