#include "tests/agent/probes/udp_relay.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <asio/ip/address.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <span>
#include <system_error>
#include <utility>

#include "agent/probes/probe_packet.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "agent/probes/stamp_packet.hpp"
#include "platform/clock.hpp"
#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes::test {
namespace {

using platform::monotonic_ns;

int open_socket(const asio::ip::udp::endpoint& bind_to, bool bind_it) {
  const int fd = ::socket(bind_to.address().is_v6() ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(), "relay socket");
  }
  if (bind_it && ::bind(fd, bind_to.data(), static_cast<socklen_t>(bind_to.size())) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "relay bind");
  }
  // Delays count from the datagram's arrival in the kernel, not from when this thread got to
  // read it: the relay's own wakeup latency is then part of the delay it reports as applied,
  // like any other time the packet spent on its way. (QEMU user mode refuses the option; reads
  // are then stamped when they happen.)
  (void)vantage::platform::enable_kernel_rx_timestamps(fd);
  return fd;
}

asio::ip::udp::endpoint to_endpoint(const sockaddr_storage& ss, socklen_t len) {
  // An endpoint holds at most a sockaddr_in6 (capacity()); never copy more than that.
  asio::ip::udp::endpoint e;
  const std::size_t n = std::min<std::size_t>(len, e.capacity());
  std::memcpy(e.data(), &ss, n);
  e.resize(n);
  return e;
}

}  // namespace

UdpRelay::UdpRelay(UdpRelayConfig config) : config_(std::move(config)), rng_state_(config_.seed) {
  const bool v6 = config_.upstream.address().is_v6();
  const asio::ip::address listen = config_.listen_address.empty()
                                       ? (v6 ? asio::ip::address(asio::ip::address_v6::loopback())
                                             : asio::ip::address(asio::ip::address_v4::loopback()))
                                       : asio::ip::make_address(config_.listen_address);
  front_ = open_socket(asio::ip::udp::endpoint(listen, 0), true);
  back_ = open_socket(config_.upstream, false);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(front_, reinterpret_cast<sockaddr*>(&ss), &len);
  endpoint_ = to_endpoint(ss, len);
  thread_ = std::thread([this] { run(); });
}

UdpRelay::~UdpRelay() {
  stop_.store(true, std::memory_order_relaxed);
  thread_.join();
  ::close(front_);
  ::close(back_);
}

std::vector<RelayRecord> UdpRelay::records() const {
  const std::lock_guard lock(mutex_);
  return records_;
}

std::vector<std::uint64_t> UdpRelay::forwarded(RelayDirection direction) const {
  const std::lock_guard lock(mutex_);
  return forwarded_[static_cast<int>(direction)];
}

RelayCounts UdpRelay::counts(RelayDirection direction) const {
  const std::lock_guard lock(mutex_);
  return counts_[static_cast<int>(direction)];
}

std::size_t UdpRelay::pending() const {
  const std::lock_guard lock(mutex_);
  return pending_.size();
}

void UdpRelay::run() {
  const std::int64_t end = monotonic_ns() + std::chrono::nanoseconds(config_.lifetime).count();
  while (!stop_.load(std::memory_order_relaxed)) {
    std::int64_t now = monotonic_ns();
    if (now >= end) {
      return;
    }
    // Sleep until the next release, but at most 5 ms so stop() is noticed promptly.
    std::int64_t wait = 5'000'000;
    {
      const std::lock_guard lock(mutex_);
      for (const Pending& p : pending_) {
        wait = std::min(wait, std::max<std::int64_t>(0, p.release_ns - now));
      }
    }
    std::array<pollfd, 2> fds{{{front_, POLLIN, 0}, {back_, POLLIN, 0}}};
    const timespec timeout{static_cast<time_t>(wait / 1'000'000'000),
                           static_cast<long>(wait % 1'000'000'000)};
    const int ready = ::ppoll(fds.data(), fds.size(), &timeout, nullptr);
    now = monotonic_ns();
    const std::lock_guard lock(mutex_);
    if (ready > 0) {
      if ((fds[0].revents & POLLIN) != 0) {
        read_from(front_, RelayDirection::kOutbound, now);
      }
      if ((fds[1].revents & POLLIN) != 0) {
        read_from(back_, RelayDirection::kInbound, now);
      }
    }
    release_due(monotonic_ns());
  }
}

void UdpRelay::read_from(int fd, RelayDirection direction, std::int64_t now) {
  std::array<std::byte, 65536> buffer;
  sockaddr_storage from{};
  alignas(std::max_align_t) std::array<unsigned char, 128> control{};
  const vantage::platform::ReceivedDatagram d =
      vantage::platform::receive_datagram(fd, buffer, from, control);
  if (d.status != vantage::platform::ReceivedDatagram::Status::kDatagram) {
    return;
  }
  const ssize_t n = static_cast<ssize_t>(d.size);
  const socklen_t from_len = d.peer_len;
  if (d.kernel_realtime_ns) {
    // The kernel's arrival time, by the probers' rule (not its age against `now`, which was
    // read before this thread was perhaps preempted).
    if (const vantage::platform::RxTime t = vantage::platform::monotonic_rx_time(d.kernel_realtime_ns); t.kernel) {
      now = t.ns;
    }
  }
  const asio::ip::udp::endpoint sender = to_endpoint(from, from_len);
  if (direction == RelayDirection::kOutbound) {
    client_ = sender;
    have_client_ = true;
  } else if (sender != config_.upstream) {
    return;  // only the reflector's answers are relayed back
  }
  const std::span<const std::byte> bytes(buffer.data(), static_cast<std::size_t>(n));
  const RelayImpairment& imp = direction == RelayDirection::kOutbound ? config_.outbound : config_.inbound;
  RelayCounts& counts = counts_[static_cast<int>(direction)];
  ++counts.received;

  RelayRecord record;
  record.direction = direction;
  ProbeHeader header;
  const ProbeKind kind = direction == RelayDirection::kOutbound ? ProbeKind::kRequest : ProbeKind::kReply;
  if (config_.stamp) {
    stamp::SenderPacket request;
    stamp::ReflectorPacket reflector;
    if (direction == RelayDirection::kOutbound && stamp::decode_sender(bytes, stamp::Mode::kUnauthenticated, request)) {
      record.seq = request.seq;
    } else if (direction == RelayDirection::kInbound &&
               stamp::decode_reflector(bytes, stamp::Mode::kUnauthenticated, reflector)) {
      record.seq = reflector.sender_seq;
    }
  } else if (decode_probe(bytes, kind, header) == ProbeDecodeStatus::kOk) {
    record.seq = header.sequence;
  }
  const bool probe = record.seq != kRelayNotAProbe;
  if (probe && imp.drop.contains(record.seq)) {
    record.dropped = true;
    ++counts.dropped;
    records_.push_back(record);
    return;
  }
  record.duplicated = probe && imp.duplicate.contains(record.seq);
  record.reordered = probe && imp.reorder.contains(record.seq);
  counts.duplicated += record.duplicated ? 1 : 0;
  counts.reordered += record.reordered ? 1 : 0;
  const std::int64_t jitter = imp.jitter.count();
  const std::int64_t offset =
      jitter > 0
          ? static_cast<std::int64_t>(next_random(rng_state_) % static_cast<std::uint64_t>(2 * jitter + 1)) -
                jitter
          : 0;
  record.planned_delay_ns = std::max<std::int64_t>(0, imp.base_delay.count() + offset);

  Pending p;
  p.record = records_.size();
  p.read_ns = now;
  p.held = record.reordered;
  p.release_ns = now + record.planned_delay_ns +
                 (p.held ? std::chrono::nanoseconds(config_.reorder_timeout).count() : std::int64_t{0});
  p.bytes.assign(bytes.begin(), bytes.end());
  records_.push_back(record);
  pending_.push_back(std::move(p));
}

void UdpRelay::release_due(std::int64_t now) {
  for (;;) {
    // Earliest due datagram first, so equal delays keep arrival order.
    auto due = pending_.end();
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->release_ns <= now && (due == pending_.end() || it->release_ns < due->release_ns)) {
        due = it;
      }
    }
    if (due == pending_.end()) {
      return;
    }
    const Pending p = std::move(*due);
    pending_.erase(due);
    forward(p, now);
    // A held-back datagram follows the next one of its direction.
    const RelayDirection direction = records_[p.record].direction;
    if (!p.held) {
      for (Pending& q : pending_) {
        if (q.held && records_[q.record].direction == direction && q.read_ns <= p.read_ns) {
          q.held = false;
          q.release_ns = now;
        }
      }
    }
  }
}

void UdpRelay::forward(const Pending& p, std::int64_t now) {
  RelayRecord& record = records_[p.record];
  const int fd = record.direction == RelayDirection::kOutbound ? back_ : front_;
  const asio::ip::udp::endpoint to =
      record.direction == RelayDirection::kOutbound ? config_.upstream : client_;
  if (record.direction == RelayDirection::kInbound && !have_client_) {
    return;
  }
  const int copies = record.duplicated ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    if (::sendto(fd, p.bytes.data(), p.bytes.size(), 0, to.data(), static_cast<socklen_t>(to.size())) ==
        static_cast<ssize_t>(p.bytes.size())) {
      ++counts_[static_cast<int>(record.direction)].forwarded;
      forwarded_[static_cast<int>(record.direction)].push_back(record.seq);
    }
  }
  record.applied_delay_ns = now - p.read_ns;
}

}  // namespace vantage::agent::probes::test
