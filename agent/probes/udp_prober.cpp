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
  return std::isfinite(t.rate_per_s) && t.rate_per_s > 0 && t.rate_per_s <= kMaxRatePerS &&
         t.payload_size >= kProbeHeaderSize && t.payload_size <= kMaxProbeSize && t.dscp < 64 &&
         t.endpoint.port() != 0;
}

// The peer, read as a Sockaddr (sockaddr_in or sockaddr_in6), against a port and address bytes.
template <typename Sockaddr, auto kPort, auto kAddress, typename Bytes>
bool same_port_and_address(const sockaddr_storage& peer, std::uint16_t port, const Bytes& address) noexcept {
  Sockaddr s{};
  std::memcpy(&s, &peer, sizeof(s));
  return ntohs(s.*kPort) == port && std::memcmp(&(s.*kAddress), address.data(), address.size()) == 0;
}

// A reflector answers from the address and port it was probed on; the scope id of a
// link-local address is not compared, as the kernel fills it in on receive.
bool same_endpoint(const asio::ip::udp::endpoint& target, const sockaddr_storage& peer) noexcept {
  const asio::ip::address& a = target.address();
  if (peer.ss_family == AF_INET && a.is_v4()) {
    return same_port_and_address<sockaddr_in, &sockaddr_in::sin_port, &sockaddr_in::sin_addr>(
        peer, target.port(), a.to_v4().to_bytes());
  }
  if (peer.ss_family == AF_INET6 && a.is_v6()) {
    return same_port_and_address<sockaddr_in6, &sockaddr_in6::sin6_port, &sockaddr_in6::sin6_addr>(
        peer, target.port(), a.to_v6().to_bytes());
  }
  return false;
}

}  // namespace

UdpProber::UdpProber(asio::io_context& io, UdpProberConfig config, platform::SpscRing<ProbeEvent>& events)
    : io_(io), config_(std::move(config)), events_(events), v4_(io), v6_(io), timer_(io) {}

UdpProber::~UdpProber() = default;

platform::Status UdpProber::start() {
  std::size_t max_payload = kProbeHeaderSize;
  bool any_v4 = false;
  bool any_v6 = false;
  for (std::size_t i = 0; i < config_.targets.size(); ++i) {
    const UdpProbeTarget& t = config_.targets[i];
    if (!valid(t)) {
      return platform::Status::error("invalid target " + std::to_string(i + 1) +
                                     " (rate, payload size, DSCP or port 0)");
    }
    max_payload = std::max(max_payload, t.payload_size);
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

  std::error_code ec;
  if (any_v4) {
    ec = open(v4_, false);
  }
  if (!ec && any_v6) {
    ec = open(v6_, true);
  }
  if (ec) {
    std::error_code ignored;
    v4_.socket.close(ignored);
    v6_.socket.close(ignored);
    return platform::Status::error(ec.message(), platform::Errc::kIo);
  }
  kernel_timestamps_.store(
      (!any_v4 || v4_.kernel_timestamps) && (!any_v6 || v6_.kernel_timestamps) && (any_v4 || any_v6),
      std::memory_order_relaxed);

  send_buffer_.assign(max_payload, std::byte{0});
  receive_buffer_.assign(max_payload + 1, std::byte{0});
  schedule_.reset(kJitter, config_.jitter_seed != 0 ? config_.jitter_seed : platform::random_seed());
  schedule_.reserve(config_.targets.size());

  const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
  targets_.clear();
  targets_.reserve(config_.targets.size());
  for (const UdpProbeTarget& t : config_.targets) {
    TargetState s;
    s.config = t;
    if (const std::size_t i = schedule_.add(t.rate_per_s, now); !t.resolved) {
      schedule_.set_active(i, false, now);
    }
    targets_.push_back(s);
  }

  stopping_ = false;
  sending_stopped_ = false;
  if (any_v4) {
    arm_read(v4_);
  }
  if (any_v6) {
    arm_read(v6_);
  }
  arm_timer();
  return platform::Status();
}

void UdpProber::stop() {
  asio::post(io_, [this] {
    stopping_ = true;
    timer_.cancel();
    std::error_code ignored;
    v4_.socket.close(ignored);
    v6_.socket.close(ignored);
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
      Socket& s = a->is_v6() ? v6_ : v4_;
      if (!s.socket.is_open()) {
        if (open(s, a->is_v6())) {
          std::error_code ignored;
          s.socket.close(ignored);
          send_errors_.bump();  // retried at the next change or refresh of the name
          a.reset();
        } else {
          arm_read(s);
        }
      }
    }
    t.config.resolved = a.has_value();
    if (a) {
      t.config.endpoint.address(*a);
    }
    const bool more = t.config.count == 0 || t.next_seq < t.config.count;
    schedule_.set_active(position, a.has_value() && more, clock_ns(CLOCK_MONOTONIC));
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
  });
}

UdpProberCounters UdpProber::counters() const noexcept {
  return snapshot_of<UdpProberCounters>(sent_, send_errors_, received_, replies_, dropped_foreign_,
                                        dropped_malformed_, dropped_unexpected_, invalid_dwell_,
                                        receive_errors_, dscp_errors_, events_dropped_);
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
  if (ec) {
    return ec;
  }
  s.kernel_timestamps =
      config_.kernel_timestamps && platform::enable_kernel_rx_timestamps(s.socket.native_handle());
  s.dscp = 0;
  return {};
}

void UdpProber::arm_timer() {
  const std::int64_t next = schedule_.earliest();
  if (next == std::numeric_limits<std::int64_t>::max() || stopping_ || sending_stopped_) {
    return;
  }
  timer_.expires_at(platform::steady_time(next));
  timer_.async_wait([this](const std::error_code& ec) {
    // operation_aborted is the normal end after stop().
    if (ec || stopping_ || sending_stopped_) {
      return;
    }
    schedule_.run_due(clock_ns(CLOCK_MONOTONIC), [this](std::size_t i) {
      TargetState& t = targets_[i];
      send_probe(t);
      if (t.config.count != 0 && t.next_seq >= t.config.count) {
        schedule_.finish(i);
      }
    });
    arm_timer();
  });
}

void UdpProber::send_probe(TargetState& t) {
  const bool v6 = t.config.endpoint.address().is_v6();
  Socket& s = v6 ? v6_ : v4_;
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
  event.protocol = ProbeProtocol::kUdpEcho;
  event.seq = t.next_seq++;

  ProbeHeader header;
  header.sequence = event.seq;
  header.sender_id = config_.sender_id;
  // Read as late as possible so the RTT excludes encoding; the few bytes written after the
  // read are the send time itself.
  event.send_ns = clock_ns(CLOCK_MONOTONIC);
  header.send_ns = static_cast<std::uint64_t>(event.send_ns);
  const std::size_t size = encode_request(header, send_buffer_, t.config.payload_size);
  const ssize_t n =
      size == 0 ? -1
                : ::sendto(s.socket.native_handle(), send_buffer_.data(), size, MSG_DONTWAIT,
                           t.config.endpoint.data(), static_cast<socklen_t>(t.config.endpoint.size()));
  if (n == static_cast<ssize_t>(size) && size != 0) {
    sent_.bump();
    event.kind = ProbeEventKind::kSent;
  } else {
    send_errors_.bump();
    event.kind = ProbeEventKind::kSendError;
  }
  emit(event);
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
    handle_reply(d.size, d.truncated,
                 platform::monotonic_rx_time(s.kernel_timestamps ? d.kernel_realtime_ns : std::nullopt));
  }
}

void UdpProber::handle_reply(std::size_t size, bool truncated, platform::RxTime rx) {
  received_.bump();
  const std::span<const std::byte> packet(receive_buffer_.data(), truncated ? receive_buffer_.size() : size);
  ProbeHeader reply;
  if (const ProbeDecodeStatus status = decode_probe(packet, ProbeKind::kReply, reply, receive_buffer_.size() - 1);
      status != ProbeDecodeStatus::kOk) {
    (is_malformed_probe(status) ? dropped_malformed_ : dropped_foreign_).bump();
    return;
  }
  const TargetState* target = nullptr;
  for (const TargetState& t : targets_) {
    if (t.config.resolved && same_endpoint(t.config.endpoint, peer_)) {
      target = &t;
      break;
    }
  }
  if (target == nullptr) {
    dropped_foreign_.bump();
    return;
  }
  if (reply.sender_id != config_.sender_id || reply.sequence >= target->next_seq ||
      packet.size() != target->config.payload_size) {
    dropped_unexpected_.bump();
    return;
  }

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
  replies_.bump();
  emit(event);
}

void UdpProber::emit(const ProbeEvent& event) noexcept {
  // Never wait for the consumer: a full ring costs this one event, counted.
  if (!events_.try_push(event)) {
    events_dropped_.bump();
  }
}

}  // namespace vantage::agent::probes
