#include "agent/probes/reflector_socket.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <asio/ip/address.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>

#include <cerrno>
#include <cstring>
#include <utility>

#include "platform/clock.hpp"
#include "platform/cmsg.hpp"
#include "platform/enum_names.hpp"
#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

// Datagrams handled per wakeup before re-arming the wait: drains a burst in one go while
// letting other work on the same io_context run during a sustained flood. The wait fires
// again at once while the socket still holds data.
constexpr int kMaxBatch = 64;

// Asks for each datagram's destination address. A dual-stack "::" socket needs only the IPv6
// option: Linux reports IPv4 arrivals on it as IPV6_PKTINFO with a v4-mapped address, and
// accepts that form back when sending to a v4-mapped peer.
bool enable_pktinfo(int fd, bool v6) noexcept {
  const int one = 1;
  return v6 ? ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) == 0
            : ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) == 0;
}

// TTL and TOS of IPv4 arrivals (on a dual-stack socket too: the IPv4 options apply to its
// v4-mapped traffic), hop limit and traffic class of IPv6 ones. Best effort: a refusal leaves
// the fields unknown.
void enable_ip_header_info(int fd, bool v6) noexcept {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof(one));
  (void)::setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &one, sizeof(one));
  if (v6) {
    (void)::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, &one, sizeof(one));
    (void)::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, &one, sizeof(one));
  }
}

template <typename Info>
std::size_t put_cmsg(std::span<unsigned char> out, int level, int type, const Info& info) noexcept {
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

bool is_v4_peer(const sockaddr_storage& peer) noexcept {
  if (peer.ss_family == AF_INET) {
    return true;
  }
  if (peer.ss_family == AF_INET6) {
    sockaddr_in6 sin6{};
    std::memcpy(&sin6, &peer, sizeof(sin6));
    return IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr);
  }
  return false;
}

}  // namespace

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

const char* to_string(TimestampSource source) noexcept {
  static constexpr const char* kNames[] = {"kernel (SO_TIMESTAMPNS, CLOCK_REALTIME)",
                                           "user space (CLOCK_MONOTONIC)"};
  static_assert(platform::enum_table_covers<TimestampSource, TimestampSource::kUserMonotonic>(kNames));
  return platform::enum_name(source, kNames);
}

platform::Status ReflectorSocket::open(const ReflectorSocketOptions& options) {
  std::error_code ec;
  const asio::ip::address address = asio::ip::make_address(options.bind_address, ec);
  if (ec) {
    return platform::Status::error("'" + options.bind_address + "' is not an IP address");
  }
  const asio::ip::udp::endpoint endpoint(address, options.port);
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
  const int fd = socket_.native_handle();
  const bool kernel = options.kernel_timestamps && platform::enable_kernel_rx_timestamps(fd);
  timestamp_source_.store(kernel ? TimestampSource::kKernelRealtime : TimestampSource::kUserMonotonic,
                          std::memory_order_relaxed);
  // Refused (an emulator, an exotic kernel): replies then go out with plain sendto.
  const bool pktinfo = options.reply_from_destination && enable_pktinfo(fd, address.is_v6());
  replies_from_destination_.store(pktinfo, std::memory_order_relaxed);
  ip_header_info_ = options.ip_header_info;
  if (ip_header_info_) {
    enable_ip_header_info(fd, address.is_v6());
  }
  pinned_reply_sent_ = false;
  stopping_ = false;
  return platform::Status();
}

void ReflectorSocket::serve(std::span<std::byte> buffer, DatagramHandler on_datagram,
                            std::function<void()> on_receive_error) {
  buffer_ = buffer;
  on_datagram_ = std::move(on_datagram);
  on_receive_error_ = std::move(on_receive_error);
  arm();
}

void ReflectorSocket::stop() {
  asio::post(socket_.get_executor(), [this] {
    stopping_ = true;
    close();
  });
}

void ReflectorSocket::close() noexcept {
  std::error_code ignored;
  socket_.close(ignored);
}

void ReflectorSocket::arm() {
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

void ReflectorSocket::on_readable() {
  for (int i = 0; i < kMaxBatch; ++i) {
    ReflectorDatagram d;
    const Receive r = receive(buffer_, d);
    if (r != Receive::kDatagram) {
      if (r == Receive::kError) {
        on_receive_error_();
      }
      return;
    }
    on_datagram_(d, static_cast<std::uint64_t>(platform::monotonic_ns()));
  }
}

asio::ip::udp::endpoint ReflectorSocket::local_endpoint() const {
  std::error_code ignored;
  return socket_.local_endpoint(ignored);
}

ReflectorSocket::Receive ReflectorSocket::receive(std::span<std::byte> buffer, ReflectorDatagram& out) noexcept {
  const bool kernel = timestamp_source() == TimestampSource::kKernelRealtime;
  // Re-read per datagram: a rejected pinned reply turns pktinfo off mid-batch.
  const bool pktinfo = replies_from_destination();
  const std::span<unsigned char> control = kernel || pktinfo || ip_header_info_
                                               ? std::span<unsigned char>(control_)
                                               : std::span<unsigned char>();
  const platform::ReceivedDatagram d = platform::receive_datagram(socket_.native_handle(), buffer, peer_, control);
  if (d.status != platform::ReceivedDatagram::Status::kDatagram) {
    return d.status == platform::ReceivedDatagram::Status::kError ? Receive::kError : Receive::kWouldBlock;
  }
  peer_len_ = d.peer_len;
  peer_v4_ = is_v4_peer(peer_);
  out = ReflectorDatagram{};
  out.size = d.size;
  out.truncated = d.truncated;
  out.kernel_rx_ns = kernel ? d.kernel_realtime_ns : std::nullopt;
  reply_pktinfo_len_ = 0;
  if (control.empty()) {
    return Receive::kDatagram;
  }
  const std::span<unsigned char> reply(reply_control_);
  platform::for_each_cmsg(platform::control_message(control, d), [&](const cmsghdr& c) {
    if (in_pktinfo in{}; pktinfo && platform::read_cmsg(c, IPPROTO_IP, IP_PKTINFO, in)) {
      // ipi_spec_dst, not ipi_addr: it is the kernel's choice of local address to answer
      // from, the destination itself for unicast and the interface's address for a
      // broadcast, which is not a valid source. The interface index stays 0 so that routing
      // still picks the outgoing interface, as for sendto.
      in_pktinfo r{};
      r.ipi_spec_dst = in.ipi_spec_dst;
      reply_pktinfo_len_ = put_cmsg(reply, IPPROTO_IP, IP_PKTINFO, r);
    } else if (in6_pktinfo in6{}; pktinfo && platform::read_cmsg(c, IPPROTO_IPV6, IPV6_PKTINFO, in6)) {
      in6_pktinfo r{};
      r.ipi6_addr = in6.ipi6_addr;
      reply_pktinfo_len_ = put_cmsg(reply, IPPROTO_IPV6, IPV6_PKTINFO, r);
    } else if (int v = 0; platform::read_cmsg(c, IPPROTO_IP, IP_TTL, v) ||
                          platform::read_cmsg(c, IPPROTO_IPV6, IPV6_HOPLIMIT, v)) {
      out.ttl = v;
    } else if (platform::read_cmsg(c, IPPROTO_IPV6, IPV6_TCLASS, v)) {
      out.tos = v & 0xff;
    } else if (unsigned char tos = 0; platform::read_cmsg(c, IPPROTO_IP, IP_TOS, tos)) {
      out.tos = tos;
    }
  });
  return Receive::kDatagram;
}

ReflectorSocket::Sent ReflectorSocket::send_reply(std::span<const std::byte> packet, int tos) noexcept {
  // iovec's pointer is not const, but sendmsg only reads through it.
  iovec iov{const_cast<std::byte*>(packet.data()), packet.size()};
  msghdr msg{};
  msg.msg_name = &peer_;
  msg.msg_namelen = peer_len_;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::size_t tos_len = 0;
  if (tos >= 0 && ip_header_info_) {
    // IPv4 on the wire takes IP_TOS (also through a dual-stack socket), IPv6 IPV6_TCLASS.
    const std::span<unsigned char> room = std::span<unsigned char>(reply_control_).subspan(reply_pktinfo_len_);
    tos_len = peer_v4_ ? put_cmsg(room, IPPROTO_IP, IP_TOS, tos) : put_cmsg(room, IPPROTO_IPV6, IPV6_TCLASS, tos);
  }
  if (reply_pktinfo_len_ + tos_len != 0) {
    msg.msg_control = reply_control_.data();
    msg.msg_controllen = reply_pktinfo_len_ + tos_len;
  }
  if (reply_pktinfo_len_ != 0) {
    const ssize_t sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
    if (sent >= 0) {
      pinned_reply_sent_ = true;
      return sent == static_cast<ssize_t>(packet.size()) ? Sent::kPinned : Sent::kFailed;
    }
    if (errno != EINVAL) {
      return Sent::kFailed;
    }
    // The kernel refused the source address. Once pinned replies have worked, that is this
    // address going away (or a v4-mapped source on an old kernel); if none ever did, the
    // platform does not take pktinfo on send (an emulator), so stop trying. Either way a
    // reply from the routed source is still worth sending: a prober that matches it loses
    // nothing, and one that does not drops it as it would have.
    if (!pinned_reply_sent_) {
      replies_from_destination_.store(false, std::memory_order_relaxed);
    }
    // Keep only the TOS message, moved to the front.
    if (tos_len != 0) {
      std::memmove(reply_control_.data(), reply_control_.data() + reply_pktinfo_len_, tos_len);
      msg.msg_control = reply_control_.data();
      msg.msg_controllen = tos_len;
    } else {
      msg.msg_control = nullptr;
      msg.msg_controllen = 0;
    }
  }
  const ssize_t sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
  return sent == static_cast<ssize_t>(packet.size()) ? Sent::kUnpinned : Sent::kFailed;
}

}  // namespace vantage::agent::probes
