// One non-blocking recvmsg of a datagram with its sender and, when asked for, the kernel's
// receive timestamp and the rest of its control data: the read step shared by the reflector
// and the UDP and ICMP probers.
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "platform/rx_timestamp.hpp"

namespace vantage::platform {

struct ReceivedDatagram {
  enum class Status : std::uint8_t {
    kDatagram,    // one datagram read
    kWouldBlock,  // nothing queued: wait for readability again
    kError,       // recvmsg failed otherwise (the caller counts it and waits again)
  };
  Status status = Status::kWouldBlock;
  std::size_t size = 0;                            // bytes placed in the buffer
  bool truncated = false;                          // the datagram was longer than the buffer (MSG_TRUNC)
  socklen_t peer_len = 0;                          // valid bytes of `peer`
  std::optional<std::int64_t> kernel_realtime_ns;  // SCM_TIMESTAMPNS, when control space was given
  // Bytes of `control` the kernel filled in, for callers that read other control messages
  // (IP_PKTINFO, ...) themselves; see control_message().
  std::size_t control_len = 0;
};

// Reads one datagram without blocking, retrying on EINTR. Pass an empty `control` span when the
// socket has no kernel timestamps or other ancillary data enabled.
inline ReceivedDatagram receive_datagram(int fd, std::span<std::byte> buffer, sockaddr_storage& peer,
                                         std::span<unsigned char> control) noexcept {
  ReceivedDatagram out;
  for (;;) {
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_name = &peer;
    msg.msg_namelen = sizeof(peer);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.empty() ? nullptr : control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      out.status = (errno == EAGAIN || errno == EWOULDBLOCK) ? ReceivedDatagram::Status::kWouldBlock
                                                             : ReceivedDatagram::Status::kError;
      return out;
    }
    out.status = ReceivedDatagram::Status::kDatagram;
    out.size = static_cast<std::size_t>(n);
    out.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    out.peer_len = msg.msg_namelen;
    if (!control.empty()) {
      out.kernel_realtime_ns = kernel_rx_realtime_ns(msg);
      out.control_len = msg.msg_controllen;
    }
    return out;
  }
}

// A msghdr over the control data of a datagram read by receive_datagram(), for walking it
// with CMSG_FIRSTHDR/CMSG_NXTHDR.
inline msghdr control_message(std::span<unsigned char> control, const ReceivedDatagram& d) noexcept {
  msghdr msg{};
  msg.msg_control = control.empty() ? nullptr : control.data();
  msg.msg_controllen = d.control_len;
  return msg;
}

}  // namespace vantage::platform
