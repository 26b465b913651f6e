// Reading many datagrams with one recvmmsg: each with its sender and, when asked for, its
// kernel receive timestamp. For probers that read replies at their wakeups rather than as each
// arrives: with kernel timestamps the arrival time does not depend on when it is read.
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::platform {

// Buffers for up to `capacity` datagrams of up to `buffer_size` bytes each, allocated once.
// Used from one thread.
class ReceiveBatch {
 public:
  static constexpr std::size_t kControlSize = 64;  // room for SCM_TIMESTAMPNS and a little more

  ReceiveBatch() = default;
  ReceiveBatch(std::size_t capacity, std::size_t buffer_size) { resize(capacity, buffer_size); }

  void resize(std::size_t capacity, std::size_t buffer_size) {
    buffer_size_ = buffer_size;
    data_.assign(capacity * buffer_size, std::byte{0});
    control_.assign(capacity * kControlSize, 0);
    peers_.assign(capacity, sockaddr_storage{});
    iov_.assign(capacity, iovec{});
    messages_.assign(capacity, mmsghdr{});
  }
  [[nodiscard]] std::size_t capacity() const noexcept { return messages_.size(); }

  // Reads up to capacity() queued datagrams without blocking, retrying on EINTR. kDatagram
  // with count() > 0; kWouldBlock: nothing queued; kError: recvmmsg failed otherwise (errno).
  ReceivedDatagram::Status receive(int fd, bool timestamps) noexcept {
    count_ = 0;
    for (std::size_t i = 0; i < messages_.size(); ++i) {
      iov_[i] = iovec{data_.data() + i * buffer_size_, buffer_size_};
      msghdr& m = messages_[i].msg_hdr;
      m = msghdr{};
      m.msg_name = &peers_[i];
      m.msg_namelen = sizeof(sockaddr_storage);
      m.msg_iov = &iov_[i];
      m.msg_iovlen = 1;
      if (timestamps) {
        m.msg_control = control_.data() + i * kControlSize;
        m.msg_controllen = kControlSize;
      }
      messages_[i].msg_len = 0;
    }
    for (;;) {
      const int n = ::recvmmsg(fd, messages_.data(), static_cast<unsigned>(messages_.size()), MSG_DONTWAIT, nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? ReceivedDatagram::Status::kWouldBlock
                                                         : ReceivedDatagram::Status::kError;
      }
      count_ = static_cast<std::size_t>(n);
      timestamps_ = timestamps;
      return n == 0 ? ReceivedDatagram::Status::kWouldBlock : ReceivedDatagram::Status::kDatagram;
    }
  }

  [[nodiscard]] std::size_t count() const noexcept { return count_; }
  // Datagram i of the last receive(): its bytes (the whole buffer when truncated), whether it
  // was longer than the buffer, its sender, its kernel CLOCK_REALTIME stamp.
  [[nodiscard]] std::span<std::byte> data(std::size_t i) noexcept {
    return {data_.data() + i * buffer_size_, truncated(i) ? buffer_size_ : messages_[i].msg_len};
  }
  [[nodiscard]] bool truncated(std::size_t i) const noexcept { return (messages_[i].msg_hdr.msg_flags & MSG_TRUNC) != 0; }
  [[nodiscard]] const sockaddr_storage& peer(std::size_t i) const noexcept { return peers_[i]; }
  [[nodiscard]] std::optional<std::int64_t> kernel_realtime_ns(std::size_t i) const noexcept {
    return timestamps_ ? kernel_rx_realtime_ns(messages_[i].msg_hdr) : std::nullopt;
  }

 private:
  std::size_t buffer_size_ = 0;
  std::size_t count_ = 0;
  bool timestamps_ = false;
  std::vector<std::byte> data_;
  std::vector<unsigned char> control_;
  std::vector<sockaddr_storage> peers_;
  std::vector<iovec> iov_;
  std::vector<mmsghdr> messages_;
};

}  // namespace vantage::platform
