// Walking the control messages of a received msghdr, the one way the reflector, the kernel
// receive timestamps and the ICMP error queue read theirs.
#pragma once

#include <sys/socket.h>

#include <cstring>

namespace vantage::platform {

// Calls f(const cmsghdr&) for each control message of msg, in order.
template <typename F>
void for_each_cmsg(const msghdr& msg, F&& f) noexcept {
  // glibc's CMSG_NXTHDR takes a non-const msghdr but only reads it.
  msghdr* m = const_cast<msghdr*>(&msg);
  for (cmsghdr* c = CMSG_FIRSTHDR(m); c != nullptr; c = CMSG_NXTHDR(m, c)) {
    f(static_cast<const cmsghdr&>(*c));
  }
}

// Copies c's payload into out when c is a (level, type) message long enough to hold a T.
template <typename T>
bool read_cmsg(const cmsghdr& c, int level, int type, T& out) noexcept {
  if (c.cmsg_level != level || c.cmsg_type != type || c.cmsg_len < CMSG_LEN(sizeof(T))) {
    return false;
  }
  // CMSG_DATA is not guaranteed to be aligned for T.
  std::memcpy(&out, CMSG_DATA(&c), sizeof(T));
  return true;
}

}  // namespace vantage::platform
