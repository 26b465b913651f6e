#include "agent/probes/reflector.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/ip/address.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <span>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "platform/clock.hpp"
#include "platform/cmsg.hpp"
#include "platform/enum_names.hpp"
#include "platform/random_seed.hpp"
#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

// Datagrams handled per wakeup before re-arming the wait: drains a burst in one go while
// letting other work on the same io_context run during a sustained flood. The wait fires
// again at once while the socket still holds data.
constexpr int kMaxBatch = 64;

// The reflector's stamps travel as unsigned nanoseconds.
std::uint64_t now_ns(clockid_t clock) noexcept {
  return static_cast<std::uint64_t>(platform::clock_ns(clock));
}

bool valid(const ReflectorConfig& c) noexcept {
  return c.max_probe_size >= kProbeHeaderSize && c.max_probe_size <= kMaxProbeSize &&
         c.rate_limit.rate_per_s > 0 && c.rate_limit.burst > 0 && c.max_sources > 0;
}

// IPv4 is keyed as ::ffff:a.b.c.d, the form a dual-stack socket reports it in.
bool source_key(const sockaddr_storage& peer, SourceKey& key) noexcept {
  if (peer.ss_family == AF_INET6) {
    sockaddr_in6 sin6{};
    std::memcpy(&sin6, &peer, sizeof(sin6));
    std::memcpy(key.address.data(), &sin6.sin6_addr, 16);
    return true;
  }
  if (peer.ss_family == AF_INET) {
    sockaddr_in sin{};
    std::memcpy(&sin, &peer, sizeof(sin));
    key.address = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    std::memcpy(key.address.data() + 12, &sin.sin_addr, 4);
    return true;
  }
  return false;
}

// Asks for each datagram's destination address. A dual-stack "::" socket needs only the IPv6
// option: Linux reports IPv4 arrivals on it as IPV6_PKTINFO with a v4-mapped address, and
// accepts that form back when sending to a v4-mapped peer.
bool enable_pktinfo(int fd, bool v6) noexcept {
  const int one = 1;
  return v6 ? ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) == 0
            : ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) == 0;
}

template <typename Info>
std::size_t put_cmsg(std::span<unsigned char> out, int level, int type, const Info& info) noexcept {
  static_assert(CMSG_SPACE(sizeof(in6_pktinfo)) >= CMSG_SPACE(sizeof(in_pktinfo)));
  msghdr msg{};
  msg.msg_control = out.data();
  msg.msg_controllen = out.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = level;
  c->cmsg_type = type;
  c->cmsg_len = CMSG_LEN(sizeof(Info));
  std::memcpy(CMSG_DATA(c), &info, sizeof(info));
  return CMSG_SPACE(sizeof(Info));
}

// Turns the pktinfo of a received datagram into the control message that makes the reply
// leave from the same address; returns its length, or 0 when the datagram carried none. The
// interface index stays 0 so that routing still picks the outgoing interface, as for sendto.
std::size_t reply_control(const msghdr& received, std::span<unsigned char> out) noexcept {
  std::size_t len = 0;
  platform::for_each_cmsg(received, [&len, out](const cmsghdr& c) {
    if (in_pktinfo in{}; platform::read_cmsg(c, IPPROTO_IP, IP_PKTINFO, in)) {
      // ipi_spec_dst, not ipi_addr: it is the kernel's choice of local address to answer
      // from, the destination itself for unicast and the interface's address for a
      // broadcast, which is not a valid source.
      in_pktinfo reply{};
      reply.ipi_spec_dst = in.ipi_spec_dst;
      len = put_cmsg(out, IPPROTO_IP, IP_PKTINFO, reply);
    } else if (in6_pktinfo in6{}; platform::read_cmsg(c, IPPROTO_IPV6, IPV6_PKTINFO, in6)) {
      in6_pktinfo reply{};
      reply.ipi6_addr = in6.ipi6_addr;
      len = put_cmsg(out, IPPROTO_IPV6, IPV6_PKTINFO, reply);
    }
  });
  return len;
}

}  // namespace

const char* to_string(TimestampSource source) noexcept {
  static constexpr const char* kNames[] = {"kernel (SO_TIMESTAMPNS, CLOCK_REALTIME)",
                                           "user space (CLOCK_MONOTONIC)"};
  static_assert(platform::enum_table_covers<TimestampSource, TimestampSource::kUserMonotonic>(kNames));
  return platform::enum_name(source, kNames);
}

Reflector::Reflector(asio::io_context& io, ReflectorConfig config)
    : io_(io),
      config_(std::move(config)),
      socket_(io),
      // boot_id tells a restarted reflector from the old one; the seeds key the tables' hashes.
      boot_id_(platform::random_seed()),
      rate_table_(config_.max_sources, platform::random_seed()),
      session_table_(config_.max_sources, platform::random_seed()),
      buffer_(std::min(std::max(config_.max_probe_size, kProbeHeaderSize), kMaxProbeSize) + 1) {}

Reflector::~Reflector() = default;

platform::Status Reflector::start() {
  if (!valid(config_)) {
    return platform::Status::error("invalid configuration (probe size, rate limit or source table size)");
  }
  std::error_code ec;
  const asio::ip::address address = asio::ip::make_address(config_.bind_address, ec);
  if (ec) {
    return platform::Status::error("'" + config_.bind_address + "' is not an IP address");
  }
  const asio::ip::udp::endpoint endpoint(address, config_.port);
  socket_.open(endpoint.protocol(), ec);
  if (ec) {
    return platform::Status::error(ec.message(), platform::Errc::kIo);
  }
  // Linux's default for IPV6_V6ONLY is a sysctl (net.ipv6.bindv6only); set it explicitly so
  // "::" is dual-stack on every host.
  if (address.is_v6() && address.is_unspecified()) {
    socket_.set_option(asio::ip::v6_only(false), ec);
  }
  if (!ec) {
    socket_.bind(endpoint, ec);
  }
  if (!ec) {
    socket_.non_blocking(true, ec);
  }
  if (ec) {
    std::error_code ignored;
    socket_.close(ignored);
    return platform::Status::error(ec.message(), platform::Errc::kIo);
  }
  const bool kernel =
      config_.kernel_timestamps && platform::enable_kernel_rx_timestamps(socket_.native_handle());
  timestamp_source_.store(kernel ? TimestampSource::kKernelRealtime : TimestampSource::kUserMonotonic,
                          std::memory_order_relaxed);
  // Refused (an emulator, an exotic kernel): replies then go out with plain sendto.
  const bool pktinfo =
      config_.reply_from_destination && enable_pktinfo(socket_.native_handle(), address.is_v6());
  replies_from_destination_.store(pktinfo, std::memory_order_relaxed);
  pinned_reply_sent_ = false;
  stopping_ = false;
  arm();
  return platform::Status();
}

void Reflector::stop() {
  asio::post(io_, [this] {
    stopping_ = true;
    std::error_code ignored;
    socket_.close(ignored);
  });
}

asio::ip::udp::endpoint Reflector::local_endpoint() const {
  std::error_code ignored;
  return socket_.local_endpoint(ignored);
}

ReflectorCounters Reflector::counters() const noexcept {
  return snapshot_of<ReflectorCounters>(received_, replied_, dropped_short_, dropped_malformed_,
                                        dropped_foreign_, dropped_rate_limited_, send_errors_,
                                        receive_errors_, source_evictions_, replied_unpinned_);
}

void Reflector::arm() {
  socket_.async_wait(asio::ip::udp::socket::wait_read, [this](const std::error_code& ec) {
    // operation_aborted is the normal end after stop(); any other wait error would repeat
    // forever if re-armed, so the reflector stays down and the socket error is visible as
    // silence in the counters.
    if (ec || stopping_) {
      return;
    }
    on_readable();
    if (!stopping_ && socket_.is_open()) {
      arm();
    }
  });
}

void Reflector::on_readable() {
  const bool kernel = timestamp_source() == TimestampSource::kKernelRealtime;
  for (int i = 0; i < kMaxBatch; ++i) {
    // Re-read per datagram: a rejected pinned reply turns pktinfo off mid-batch.
    const bool pktinfo = replies_from_destination();
    const std::span<unsigned char> control =
        kernel || pktinfo ? std::span<unsigned char>(control_) : std::span<unsigned char>();
    const platform::ReceivedDatagram d =
        platform::receive_datagram(socket_.native_handle(), buffer_, peer_, control);
    if (d.status != platform::ReceivedDatagram::Status::kDatagram) {
      if (d.status == platform::ReceivedDatagram::Status::kError) {
        receive_errors_.bump();
      }
      return;
    }
    peer_len_ = d.peer_len;
    reply_control_len_ = pktinfo ? reply_control(platform::control_message(control, d), reply_control_) : 0;
    handle_datagram(d.size, d.truncated, now_ns(CLOCK_MONOTONIC), kernel ? d.kernel_realtime_ns : std::nullopt);
  }
}

void Reflector::handle_datagram(std::size_t size, bool truncated, std::uint64_t now_mono_ns,
                                std::optional<std::int64_t> kernel_rx_ns) {
  received_.bump();
  // A truncated datagram was longer than the buffer, which is longer than any accepted probe.
  const std::span<std::byte> packet(buffer_.data(), truncated ? buffer_.size() : size);
  ProbeHeader probe;
  if (const ProbeDecodeStatus status = decode_probe(packet, ProbeKind::kRequest, probe, config_.max_probe_size);
      status != ProbeDecodeStatus::kOk) {
    (status == ProbeDecodeStatus::kTooShort ? dropped_short_
     : is_malformed_probe(status)           ? dropped_malformed_
                                            : dropped_foreign_)
        .bump();
    return;
  }
  SourceKey key;
  if (!source_key(peer_, key)) {
    dropped_malformed_.bump();
    return;
  }
  // Rate-limit before creating a session, so an over-rate or spoofing source cannot churn
  // the session table faster than its own rate allows.
  bool inserted = false;
  auto& limit = rate_table_.find_or_insert(key, now_mono_ns, inserted);
  if (inserted) {
    limit.value.reset(config_.rate_limit, now_mono_ns);
    source_evictions_.store(rate_table_.evictions(), std::memory_order_relaxed);
  }
  if (!limit.value.try_take(config_.rate_limit, now_mono_ns)) {
    dropped_rate_limited_.bump();
    return;
  }
  key.qualifier = probe.sender_id;
  auto& session = session_table_.find_or_insert(key, now_mono_ns, inserted);
  if (inserted) {
    // 0 is never a session id, so a prober can use it as "no baseline yet".
    if (++next_session_id_ == 0) {
      ++next_session_id_;
    }
    session.value.id = next_session_id_;
  }
  ++session.value.rx;

  ReplyStamp stamp;
  stamp.boot = boot_id_;
  stamp.session_id = session.value.id;
  stamp.session_rx = session.value.rx;
  if (timestamp_source() == TimestampSource::kKernelRealtime) {
    // rx and tx both in CLOCK_REALTIME. The tx read is the clock read after the datagram's read
    // that the one rule checks the stamp against (platform/rx_timestamp.hpp), so a stamp from
    // before a realtime step costs no extra read: it is replaced by tx, a dwell of 0 flagged as
    // user space, as is a datagram that came without a stamp.
    const std::int64_t tx = platform::realtime_ns();
    const platform::RxTime rx = platform::rx_time(kernel_rx_ns, tx);
    stamp.tx_ns = static_cast<std::uint64_t>(tx);
    stamp.rx_ns = static_cast<std::uint64_t>(rx.ns);
    stamp.kernel_rx_timestamp = rx.kernel;
  } else {
    // Read after recvmsg returned, and right before sending.
    stamp.rx_ns = now_mono_ns;
    stamp.tx_ns = now_ns(CLOCK_MONOTONIC);
  }
  stamp_reply(packet, stamp);
  // Same length as the request: the reply is never larger than what the source sent.
  if (send_reply(packet)) {
    replied_.bump();
  } else {
    send_errors_.bump();
  }
}

bool Reflector::send_reply(std::span<const std::byte> packet) {
  // iovec's pointer is not const, but sendmsg only reads through it.
  iovec iov{const_cast<std::byte*>(packet.data()), packet.size()};
  msghdr msg{};
  msg.msg_name = &peer_;
  msg.msg_namelen = peer_len_;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (reply_control_len_ != 0) {
    msg.msg_control = reply_control_.data();
    msg.msg_controllen = reply_control_len_;
    const ssize_t sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
    if (sent >= 0) {
      pinned_reply_sent_ = true;
      return sent == static_cast<ssize_t>(packet.size());
    }
    if (errno != EINVAL) {
      return false;
    }
    // The kernel refused the source address. Once pinned replies have worked, that is this
    // address going away (or a v4-mapped source on an old kernel); if none ever did, the
    // platform does not take pktinfo on send (an emulator), so stop trying. Either way a
    // reply from the routed source is still worth sending: a prober that matches it loses
    // nothing, and one that does not drops it as it would have.
    if (!pinned_reply_sent_) {
      replies_from_destination_.store(false, std::memory_order_relaxed);
    }
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
  }
  const ssize_t sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
  if (sent != static_cast<ssize_t>(packet.size())) {
    return false;
  }
  replied_unpinned_.bump();
  return true;
}

}  // namespace vantage::agent::probes
