#include "agent/probes/icmp_prober.hpp"

#include <fcntl.h>
#include <linux/errqueue.h>
#include <linux/filter.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/bind_allocator.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "agent/probes/handler_memory.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "platform/clock.hpp"
#include "platform/cmsg.hpp"
#include "platform/random_seed.hpp"
#include "platform/receive_datagram.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

using namespace icmp_type;
// Linux's ICMP_FILTER option on SOL_RAW (linux/icmp.h, which clashes with netinet/ip_icmp.h):
// a bit mask of ICMP types the raw socket should not be woken for.
constexpr int kIcmpFilterOption = 1;
// Datagrams handled per wakeup, as in the reflector: drains a burst, then lets others run.
constexpr int kMaxBatch = 64;
// Batched reads: datagrams per recvmmsg, and recvmmsg calls per wakeup at most.
constexpr std::size_t kBatchSize = 16;
constexpr int kMaxBatchesPerWake = 256;
// An echoed send time this far behind the reply cannot be a probe of ours still in flight.
constexpr std::int64_t kMaxRttNs = 3600LL * 1'000'000'000;

using platform::clock_ns;

bool valid(const IcmpProberConfig& c) noexcept {
  if (!(c.jitter >= 0.0 && c.jitter <= 0.5)) {
    return false;
  }
  return std::all_of(c.targets.begin(), c.targets.end(), [](const IcmpTarget& t) {
    return t.rate_per_s > 0.0 && t.rate_per_s <= kMaxIcmpRatePerS && t.dscp <= 63 &&
           t.payload_size >= kIcmpMinPayload && t.payload_size <= kIcmpMaxPayload &&
           (!t.resolved ||
            (!t.address.is_unspecified() && !(t.address.is_v6() && t.address.to_v6().is_v4_mapped())));
  });
}

// The 4 or 16 address bytes of a socket address of the family's kind; empty if it is of the
// other family or shorter than that (len: how much of it the kernel filled in).
std::span<const std::byte> ip_address_bytes(const sockaddr_storage& sa, bool ipv6,
                                            socklen_t len = sizeof(sockaddr_storage)) noexcept {
  const auto* base = reinterpret_cast<const std::byte*>(&sa);
  if (ipv6) {
    if (sa.ss_family != AF_INET6 || len < sizeof(sockaddr_in6)) return {};
    return {base + offsetof(sockaddr_in6, sin6_addr), 16};
  }
  if (sa.ss_family != AF_INET || len < sizeof(sockaddr_in)) return {};
  return {base + offsetof(sockaddr_in, sin_addr), 4};
}

bool same_address(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  return !a.empty() && a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

int default_opener(int domain, int type, int protocol) { return ::socket(domain, type, protocol); }

// A raw socket queues every echo reply the host receives, other pingers' too (collectd's, a
// second agent's): a classic BPF filter drops echo replies carrying another identifier in the
// kernel, before they are queued, copied and parsed. Other types (the errors ICMP_FILTER lets
// through) pass: their quoted id is checked in user space. IPv4 raw sockets see the IP header
// first; IPv6 ones start at the ICMPv6 header. Best effort: without it (an emulator that lacks
// SO_ATTACH_FILTER) the parser drops them as foreign, as before.
void attach_echo_id_filter(int fd, bool ipv6, std::uint16_t id) noexcept {
  const std::uint8_t echo_reply = ipv6 ? kEchoReplyV6 : kEchoReplyV4;
  constexpr std::uint32_t kAccept = 0x40000;  // the whole packet
  std::array<sock_filter, 7> v4 = {{
      {BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0},           // X = IP header length
      {BPF_LD | BPF_B | BPF_IND, 0, 0, 0},            // A = ICMP type
      {BPF_JMP | BPF_JEQ | BPF_K, 0, 2, echo_reply},  // not an echo reply: accept
      {BPF_LD | BPF_H | BPF_IND, 0, 0, 4},            // A = identifier
      {BPF_JMP | BPF_JEQ | BPF_K, 0, 1, id},          // ours: accept, else drop
      {BPF_RET | BPF_K, 0, 0, kAccept},
      {BPF_RET | BPF_K, 0, 0, 0},
  }};
  std::array<sock_filter, 6> v6 = {{
      {BPF_LD | BPF_B | BPF_ABS, 0, 0, 0},
      {BPF_JMP | BPF_JEQ | BPF_K, 0, 2, echo_reply},
      {BPF_LD | BPF_H | BPF_ABS, 0, 0, 4},
      {BPF_JMP | BPF_JEQ | BPF_K, 0, 1, id},
      {BPF_RET | BPF_K, 0, 0, kAccept},
      {BPF_RET | BPF_K, 0, 0, 0},
  }};
  sock_fprog program{};
  if (ipv6) {
    program = sock_fprog{static_cast<unsigned short>(v6.size()), v6.data()};
  } else {
    program = sock_fprog{static_cast<unsigned short>(v4.size()), v4.data()};
  }
  ::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program));
}

std::string ping_group_range() {
  std::ifstream in("/proc/sys/net/ipv4/ping_group_range");
  std::string low, high;
  if (!(in >> low >> high)) {
    return "unreadable";
  }
  return "\"" + low + " " + high + "\"";
}

}  // namespace

struct IcmpProber::Family {
  Family(asio::io_context& io, bool v6) : descriptor(io), ipv6(v6) {}
  asio::posix::stream_descriptor descriptor;
  bool ipv6;
  IcmpSocketKind kind = IcmpSocketKind::kNone;
  bool kernel_ts = false;
  std::uint16_t id = 0;  // raw sockets: ours; ping sockets: the kernel rewrites it
  int current_tos = -1;
  std::vector<std::byte> tx;
  std::vector<std::byte> rx;
  sockaddr_storage peer{};
  alignas(std::max_align_t) std::array<unsigned char, 128> control{};
  // Error-queue reads: sock_extended_err plus the offender's address (up to 60 bytes with
  // IPv6), and a timestamp if the kernel adds one.
  alignas(std::max_align_t) std::array<unsigned char, 192> error_control{};
  bool error_queue = false;  // ping socket with IP(V6)_RECVERR: ICMP errors come from there
  bool batched = false;      // read at the prober's wakeups (kernel stamps, still sending)
  HandlerMemory wait_memory;
};

struct IcmpProber::Target {
  IcmpTarget config;
  Family* family = nullptr;
  sockaddr_storage address{};
  socklen_t address_len = 0;
  std::uint64_t next_seq = 0;
};

IcmpProber::IcmpProber(asio::io_context& io, IcmpProberConfig config, EventRing& ring)
    : io_(io),
      config_(std::move(config)),
      ring_(ring),
      schedule_timer_(io),
      cookie_(platform::random_seed()) {}

IcmpProber::~IcmpProber() = default;

platform::Status IcmpProber::open_family(Family& family) {
  const IcmpSocketOpener opener = config_.socket_opener != nullptr ? config_.socket_opener : default_opener;
  const int domain = family.ipv6 ? AF_INET6 : AF_INET;
  const int protocol = family.ipv6 ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP);
  const char* const name = family.ipv6 ? "ICMPv6" : "ICMP";
  int fd = -1;
  std::string why;
  if (config_.mode != IcmpSocketMode::kRaw) {
    fd = opener(domain, SOCK_DGRAM | SOCK_CLOEXEC, protocol);
    if (fd >= 0) {
      family.kind = IcmpSocketKind::kDgram;
    } else {
      const int error = errno;  // before anything below can change it
      why = std::string("ping socket: ") + std::strerror(error) + " (gid " + std::to_string(::getegid()) +
            " must be within net.ipv4.ping_group_range, now " + ping_group_range() + ")";
    }
  }
  if (fd < 0 && config_.mode != IcmpSocketMode::kDgram) {
    fd = opener(domain, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd >= 0) {
      family.kind = IcmpSocketKind::kRaw;
    } else {
      const int error = errno;
      why += std::string(why.empty() ? "" : "; ") + "raw socket: " + std::strerror(error) +
             " (needs CAP_NET_RAW)";
    }
  }
  if (fd < 0) {
    return platform::Status::error(std::string(name) + " probing unavailable (mode " +
                                       (config_.mode == IcmpSocketMode::kAuto    ? "auto"
                                        : config_.mode == IcmpSocketMode::kDgram ? "dgram"
                                                                                 : "raw") +
                                       "): " + why,
                                   platform::Errc::kIo);
  }
  std::error_code ec;
  family.descriptor.assign(fd, ec);
  if (!ec) {
    family.descriptor.non_blocking(true, ec);
  }
  if (ec) {
    return platform::Status::error(std::string(name) + " probing unavailable: " + ec.message(),
                                   platform::Errc::kIo);
  }
  if (family.kind == IcmpSocketKind::kRaw) {
    family.id = static_cast<std::uint16_t>(platform::random_seed());
    // Only echo replies and the errors that can be about a probe wake us; a raw socket
    // otherwise sees every ICMP message on the host, including our own requests on loopback.
    // Best effort: the parsers reject the rest anyway.
    if (family.ipv6) {
      icmp6_filter filter{};
      ICMP6_FILTER_SETBLOCKALL(&filter);
      for (const std::uint8_t type : {kEchoReplyV6, kDestUnreachableV6, kPacketTooBigV6, kTimeExceededV6}) {
        ICMP6_FILTER_SETPASS(type, &filter);
      }
      ::setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &filter, sizeof(filter));
    } else {
      const std::uint32_t blocked =
          ~((std::uint32_t{1} << kEchoReplyV4) | (std::uint32_t{1} << kDestUnreachableV4) |
            (std::uint32_t{1} << kTimeExceededV4));
      ::setsockopt(fd, SOL_RAW, kIcmpFilterOption, &blocked, sizeof(blocked));
    }
    attach_echo_id_filter(fd, family.ipv6, family.id);
  } else {
    // A ping socket gets ICMP errors about its requests only through the error queue. Linux's
    // ping_err() tests the IPv4 flag even on IPv6 sockets before queueing, so those need both.
    // Best effort: without it, such probes are simply counted lost, as before.
    const int on = 1;
    bool queued = ::setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof(on)) == 0;
    if (family.ipv6) {
      queued = ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof(on)) == 0 && queued;
    }
    family.error_queue = queued;
  }
  family.kernel_ts = config_.kernel_timestamps && platform::enable_kernel_rx_timestamps(fd);
  family.tx.assign(kIcmpHeaderSize + kIcmpMaxPayload, std::byte{0});
  // Room for an IPv4 header with options in front of the largest reply, plus one byte so an
  // oversized datagram shows as truncated.
  family.rx.assign(60 + kIcmpHeaderSize + kIcmpMaxPayload + 1, std::byte{0});
  return platform::Status();
}

platform::Status IcmpProber::start() {
  if (!valid(config_)) {
    return platform::Status::error("invalid ICMP prober configuration");
  }
  // A name not resolved yet opens the IPv4 socket, so that a missing permission shows at start
  // rather than when the name resolves; an IPv6 one is opened when an address needs it.
  const bool need_v4 = std::any_of(config_.targets.begin(), config_.targets.end(),
                                   [](const IcmpTarget& t) { return !t.resolved || t.address.is_v4(); });
  const bool need_v6 = std::any_of(config_.targets.begin(), config_.targets.end(),
                                   [](const IcmpTarget& t) { return t.resolved && t.address.is_v6(); });
  auto v4 = need_v4 ? std::make_unique<Family>(io_, false) : nullptr;
  auto v6 = need_v6 ? std::make_unique<Family>(io_, true) : nullptr;
  for (Family* family : {v4.get(), v6.get()}) {
    if (family != nullptr) {
      if (platform::Status status = open_family(*family); !status) {
        return status;  // the unique_ptrs close whatever was opened
      }
    }
  }
  v4_ = std::move(v4);
  v6_ = std::move(v6);
  kind_v4_.store(v4_ ? v4_->kind : IcmpSocketKind::kNone, std::memory_order_relaxed);
  kind_v6_.store(v6_ ? v6_->kind : IcmpSocketKind::kNone, std::memory_order_relaxed);
  kernel_ts_v4_.store(v4_ && v4_->kernel_ts, std::memory_order_relaxed);
  kernel_ts_v6_.store(v6_ && v6_->kernel_ts, std::memory_order_relaxed);

  const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
  targets_.clear();
  targets_.reserve(config_.targets.size());
  const SlotGrid grid = config_.grid.for_targets(config_.targets);
  schedule_.reset(config_.jitter, platform::random_seed(), grid);
  schedule_.reserve(config_.targets.size());
  reply_wait_.resize(config_.targets.size());
  for (const IcmpTarget& t : config_.targets) {
    Target target;
    target.config = t;
    if (t.resolved) {
      place(target, t.address);
    }
    const std::size_t i = schedule_.add(t.rate_per_s, now);
    if (!t.resolved) {
      schedule_.set_active(i, false, now);
    }
    targets_.push_back(target);
  }
  stopping_ = false;
  sending_stopped_ = false;
  for (Family* family : {v4_.get(), v6_.get()}) {
    if (family != nullptr) {
      family->batched = family->kernel_ts;
      if (family->batched) {
        if (batch_.capacity() == 0) batch_.resize(kBatchSize, family->rx.size());
      } else {
        arm_receive(*family);
      }
    }
  }
  if (!targets_.empty()) {
    arm_schedule();
  }
  return platform::Status();
}

void IcmpProber::stop() {
  asio::post(io_, [this] {
    stopping_ = true;
    schedule_timer_.cancel();
    for (Family* family : {v4_.get(), v6_.get()}) {
      if (family != nullptr) {
        std::error_code ignored;
        family->descriptor.close(ignored);
      }
    }
  });
}

void IcmpProber::place(Target& target, const asio::ip::address& address) {
  target.config.address = address;
  target.address = {};
  if (address.is_v4()) {
    target.family = v4_.get();
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    const auto bytes = address.to_v4().to_bytes();
    std::memcpy(&sin.sin_addr, bytes.data(), bytes.size());
    std::memcpy(&target.address, &sin, sizeof(sin));
    target.address_len = sizeof(sin);
  } else {
    target.family = v6_.get();
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    const auto v6addr = address.to_v6();
    const auto bytes = v6addr.to_bytes();
    std::memcpy(&sin6.sin6_addr, bytes.data(), bytes.size());
    sin6.sin6_scope_id = static_cast<std::uint32_t>(v6addr.scope_id());
    std::memcpy(&target.address, &sin6, sizeof(sin6));
    target.address_len = sizeof(sin6);
  }
}

void IcmpProber::set_address(std::size_t position, std::optional<asio::ip::address> address,
                       std::function<void(bool probed)> applied) {
  asio::post(io_, [this, position, address, applied = std::move(applied)] {
    if (stopping_ || position >= targets_.size()) {
      return;
    }
    Target& target = targets_[position];
    const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
    // An IPv4-mapped address is the IPv4 one (the reply comes from the plain form).
    std::optional<asio::ip::address> a = address;
    if (a && a->is_v6() && a->to_v6().is_v4_mapped()) {
      a = asio::ip::make_address_v4(asio::ip::v4_mapped, a->to_v6());
    }
    if (a && a->is_unspecified()) {
      a.reset();
    }
    if (a) {
      std::unique_ptr<Family>& slot = a->is_v6() ? v6_ : v4_;
      if (!slot) {
        auto family = std::make_unique<Family>(io_, a->is_v6());
        if (!open_family(*family)) {
          send_errors_.bump();
          a.reset();
        } else {
          slot = std::move(family);
          (slot->ipv6 ? kind_v6_ : kind_v4_).store(slot->kind, std::memory_order_relaxed);
          (slot->ipv6 ? kernel_ts_v6_ : kernel_ts_v4_).store(slot->kernel_ts, std::memory_order_relaxed);
          slot->batched = slot->kernel_ts && !sending_stopped_;
          if (slot->batched) {
            if (batch_.capacity() == 0) batch_.resize(kBatchSize, slot->rx.size());
          } else {
            arm_receive(*slot);
          }
        }
      }
    }
    target.config.resolved = a.has_value();
    if (a) {
      place(target, *a);
    }
    schedule_.set_active(position, a.has_value(), now);
    if (!a) reply_wait_.forget(position);
    if (!sending_stopped_) {
      schedule_timer_.cancel();
      arm_schedule();
    }
    if (applied) applied(a.has_value());
  });
}

void IcmpProber::stop_sending() {
  asio::post(io_, [this] {
    sending_stopped_ = true;
    schedule_timer_.cancel();
    // The replies in flight are read as they arrive from now on (no more wakeups to read at).
    for (Family* family : {v4_.get(), v6_.get()}) {
      if (family != nullptr && family->batched && family->descriptor.is_open()) {
        family->batched = false;
        arm_receive(*family);
      }
    }
  });
}

IcmpProberCounters IcmpProber::counters() const noexcept {
  return snapshot_of<IcmpProberCounters>(sent_, replies_, send_errors_, unreachable_, unattributed_errors_,
                                         dropped_foreign_, dropped_malformed_, receive_errors_, ring_full_);
}

void IcmpProber::arm_schedule() {
  schedule_timer_.arm(
      schedule_, [this] { return !stopping_ && !sending_stopped_; },
      [this](std::size_t i, std::int64_t now) { send(targets_[i], now); }, &reads_);
}

std::size_t IcmpProber::BatchedReads::read(std::int64_t) {
  std::size_t n = 0;
  for (Family* family : {prober->v4_.get(), prober->v6_.get()}) {
    if (family != nullptr && family->batched && family->descriptor.is_open()) n += prober->read_batch(*family);
  }
  return n;
}

std::int64_t IcmpProber::BatchedReads::next_read(std::int64_t now_ns, std::size_t sent, std::size_t read) {
  bool any = false;
  for (Family* family : {prober->v4_.get(), prober->v6_.get()}) {
    any = any || (family != nullptr && family->batched && family->descriptor.is_open());
  }
  if (!any) return std::numeric_limits<std::int64_t>::max();
  return prober->reply_wait_.next_read(now_ns, sent, read, prober->schedule_.grid().slot_ns);
}

void IcmpProber::send(Target& target, std::int64_t now_ns) {
  Family& family = *target.family;
  const int fd = family.descriptor.native_handle();
  const int tos = target.config.dscp << 2;
  if (tos != family.current_tos) {
    // Best effort, and only when it changes: targets of one family share the socket.
    if (family.ipv6) {
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos));
    } else {
      ::setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
    }
    family.current_tos = tos;
  }
  ProbeEvent event;
  event.target = target.config.target;
  event.protocol = ProbeProtocol::kIcmpEcho;
  event.seq = target.next_seq++;
  const auto index = static_cast<std::uint32_t>(&target - targets_.data());
  event.send_ns = clock_ns(CLOCK_MONOTONIC);
  const std::size_t size =
      encode_icmp_echo_request(family.tx, family.ipv6, family.id, static_cast<std::uint16_t>(event.seq),
                               cookie_, event.send_ns, index, target.config.payload_size);
  const ssize_t sent = ::sendto(fd, family.tx.data(), size, MSG_DONTWAIT,
                                reinterpret_cast<const sockaddr*>(&target.address), target.address_len);
  if (sent == static_cast<ssize_t>(size)) {
    event.kind = ProbeEventKind::kSent;
    sent_.bump();
    if (family.batched) {  // a socket read on arrival needs no read-only wakeups
      reply_wait_.sent(index, event.seq, now_ns, target.config.timeout.count());
    }
  } else {
    event.kind = ProbeEventKind::kSendError;
    send_errors_.bump();
  }
  emit(event);
}

void IcmpProber::arm_receive(Family& family) {
  Family* const f = &family;
  family.descriptor.async_wait(asio::posix::stream_descriptor::wait_read,
                               with_memory(family.wait_memory, [this, f](const std::error_code& ec) {
                                 // operation_aborted is the normal end after stop(); any other
                                 // wait error would repeat forever if re-armed.
                                 if (ec || stopping_) {
                                   return;
                                 }
                                 on_readable(*f);
                                 if (!stopping_ && f->descriptor.is_open()) {
                                   arm_receive(*f);
                                 }
                               }));
}

void IcmpProber::on_readable(Family& family) {
  // A queued error keeps the socket reporting EPOLLERR until it is read: drain it first, or
  // the wait would complete again at once, forever.
  if (family.error_queue) {
    drain_error_queue(family);
  }
  for (int i = 0; i < kMaxBatch; ++i) {
    const platform::ReceivedDatagram d =
        platform::receive_datagram(family.descriptor.native_handle(), family.rx, family.peer, family.control);
    if (d.status != platform::ReceivedDatagram::Status::kDatagram) {
      if (d.status == platform::ReceivedDatagram::Status::kError) {
        on_receive_error(family, errno);
      }
      return;
    }
    const platform::RxTime rx =
        platform::monotonic_rx_time(family.kernel_ts ? d.kernel_realtime_ns : std::nullopt);
    if (d.truncated) {
      dropped_malformed_.bump();
      continue;
    }
    handle_reply(family, std::span<const std::byte>(family.rx.data(), d.size), family.peer, rx);
  }
}

// With RECVERR a plain read reports a newly queued ICMP error once as its errno (e.g.
// EHOSTUNREACH): that is the error queue's entry, not a failed receive. The entry may already
// have been drained (the pending socket error outlives it), so an errno an ICMP error maps to is
// never a receive failure on such a socket. Returns whether error-queue entries were read.
bool IcmpProber::on_receive_error(Family& family, int err) {
  const bool icmp_errno = err == EHOSTUNREACH || err == ENETUNREACH || err == EHOSTDOWN || err == ECONNREFUSED ||
                          err == EPROTO || err == EMSGSIZE || err == ENONET || err == EACCES || err == ENOPROTOOPT;
  const bool drained = family.error_queue && drain_error_queue(family) != 0;
  if (!drained && !(family.error_queue && icmp_errno)) {
    receive_errors_.bump();
  }
  return drained;
}

std::size_t IcmpProber::read_batch(Family& family) {
  if (family.error_queue) {
    drain_error_queue(family);
  }
  std::size_t replies = 0;
  // One realtime/monotonic offset for the whole wakeup: reads a few microseconds apart share it.
  const std::int64_t offset = platform::realtime_offset_ns();
  // A raw socket also queues other processes' echo replies: read until the queue is empty (up
  // to a bound), so that they cannot fill it between wakeups and crowd ours out.
  for (int b = 0; b < kMaxBatchesPerWake; ++b) {
    const platform::ReceivedDatagram::Status status = batch_.receive(family.descriptor.native_handle(), true);
    if (status != platform::ReceivedDatagram::Status::kDatagram) {
      if (status == platform::ReceivedDatagram::Status::kError && on_receive_error(family, errno)) {
        continue;  // error-queue entries read: the data queue may still hold replies
      }
      break;
    }
    const std::int64_t read_ns = clock_ns(CLOCK_MONOTONIC);
    for (std::size_t i = 0; i < batch_.count(); ++i) {
      if (batch_.truncated(i)) {
        dropped_malformed_.bump();
        continue;
      }
      replies += handle_reply(family, batch_.data(i), batch_.peer(i),
                              platform::monotonic_rx_time(batch_.kernel_realtime_ns(i), offset, read_ns))
                     ? 1
                     : 0;
    }
    if (batch_.count() < batch_.capacity()) break;  // the queue is empty
  }
  return replies;
}

bool IcmpProber::handle_reply(Family& family, std::span<const std::byte> packet, const sockaddr_storage& peer,
                              platform::RxTime rx) {
  IcmpEchoReply reply;
  const bool raw = family.kind == IcmpSocketKind::kRaw;
  IcmpParseStatus status =
      parse_icmp_echo_reply(packet, family.ipv6, raw && !family.ipv6, raw, family.id, cookie_, reply);
  if (status == IcmpParseStatus::kNotEchoReply && raw) {
    // Raw sockets receive ICMP errors as ordinary datagrams (ping sockets: the error queue).
    IcmpErrorReport report;
    status = parse_icmp_error(packet, family.ipv6, !family.ipv6, family.id, cookie_, report);
    if (status == IcmpParseStatus::kOk) {
      handle_error(family, report,
                   std::span<const std::byte>(report.destination.data(), family.ipv6 ? 16 : 4));
      return false;
    }
  }
  switch (status) {
    case IcmpParseStatus::kOk:
      break;
    case IcmpParseStatus::kNotEchoReply:
    case IcmpParseStatus::kNotIcmpError:
    case IcmpParseStatus::kWrongId:
    case IcmpParseStatus::kWrongCookie:
      dropped_foreign_.bump();
      return false;
    case IcmpParseStatus::kShortQuote:
      unattributed_errors_.bump();
      return false;
    case IcmpParseStatus::kTooShort:
    case IcmpParseStatus::kMalformed:
      dropped_malformed_.bump();
      return false;
  }
  // The cookie says we sent it; the target index and the source address must still agree, so
  // a reply (or a forged one) cannot be credited to a different target.
  if (reply.target >= targets_.size()) {
    dropped_malformed_.bump();
    return false;
  }
  Target& target = targets_[reply.target];
  if (target.family != &family ||
      !same_address(ip_address_bytes(peer, family.ipv6), ip_address_bytes(target.address, family.ipv6))) {
    dropped_foreign_.bump();
    return false;
  }
  std::uint64_t seq = 0;
  rx.not_before(reply.send_ns);
  const std::int64_t rtt = rx.ns - reply.send_ns;
  if (!unwrap_icmp_sequence(target.next_seq, reply.wire_seq, seq) || rtt < 0 || rtt > kMaxRttNs) {
    dropped_malformed_.bump();
    return false;
  }
  reply_wait_.answered(reply.target, seq);
  ProbeEvent event;
  event.target = target.config.target;
  event.protocol = ProbeProtocol::kIcmpEcho;
  event.kind = ProbeEventKind::kReply;
  event.kernel_rx_timestamp = rx.kernel;
  event.seq = seq;
  event.send_ns = reply.send_ns;
  event.receive_ns = rx.ns;
  replies_.bump();
  emit(event);
  return true;
}

std::size_t IcmpProber::drain_error_queue(Family& family) {
  const int fd = family.descriptor.native_handle();
  std::size_t drained = 0;
  for (int i = 0; i < kMaxBatch; ++i) {
    iovec iov{family.rx.data(), family.rx.size()};
    msghdr msg{};
    msg.msg_name = &family.peer;
    msg.msg_namelen = sizeof(family.peer);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = family.error_control.data();
    msg.msg_controllen = family.error_control.size();
    const ssize_t n = ::recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        receive_errors_.bump();
      }
      break;
    }
    ++drained;
    // The data is the quoted request from its ICMP header on (the kernel strips the rest), the
    // address is the request's destination, and the cmsg names the ICMP type.
    const int level = family.ipv6 ? IPPROTO_IPV6 : IPPROTO_IP;
    const int type = family.ipv6 ? IPV6_RECVERR : IP_RECVERR;
    const std::uint8_t origin = family.ipv6 ? SO_EE_ORIGIN_ICMP6 : SO_EE_ORIGIN_ICMP;
    bool found = false;
    sock_extended_err ee{};
    platform::for_each_cmsg(
        msg, [&](const cmsghdr& c) { found = found || platform::read_cmsg(c, level, type, ee); });
    const std::size_t size = std::min(static_cast<std::size_t>(n), family.rx.size());
    IcmpErrorReport report;
    if (!found || ee.ee_origin != origin || !is_icmp_error_for_probe(family.ipv6, ee.ee_type)) {
      unattributed_errors_.bump();
      continue;
    }
    report.type = ee.ee_type;
    report.code = ee.ee_code;
    // The kernel matched the quoted id to this socket already (and rewrote ours on send).
    switch (parse_quoted_echo_request(std::span<const std::byte>(family.rx.data(), size), family.ipv6, false,
                                      0, cookie_, report)) {
      case IcmpParseStatus::kOk:
        break;
      case IcmpParseStatus::kWrongCookie:
        dropped_foreign_.bump();
        continue;
      default:
        unattributed_errors_.bump();
        continue;
    }
    handle_error(family, report, ip_address_bytes(family.peer, family.ipv6, msg.msg_namelen));
  }
  return drained;
}

void IcmpProber::handle_error(Family& family, const IcmpErrorReport& report,
                              std::span<const std::byte> destination) {
  // The cookie says the request was ours; target index, destination and seq must all agree
  // too, so an error can only close a probe that was sent to the address it names.
  if (report.target >= targets_.size()) {
    unattributed_errors_.bump();
    return;
  }
  Target& target = targets_[report.target];
  const bool same_destination =
      target.family == &family && same_address(ip_address_bytes(target.address, family.ipv6), destination);
  std::uint64_t seq = 0;
  const std::int64_t age = clock_ns(CLOCK_MONOTONIC) - report.send_ns;
  if (!same_destination || !unwrap_icmp_sequence(target.next_seq, report.wire_seq, seq) || age < 0 ||
      age > kMaxRttNs) {
    unattributed_errors_.bump();
    return;
  }
  ProbeEvent event;
  event.target = target.config.target;
  event.protocol = ProbeProtocol::kIcmpEcho;
  event.kind = ProbeEventKind::kSendError;
  event.seq = seq;
  event.send_ns = report.send_ns;
  unreachable_.bump();
  emit(event);
}

void IcmpProber::emit(const ProbeEvent& event) noexcept {
  if (!ring_.try_push(event)) {
    ring_full_.bump();
  }
}

}  // namespace vantage::agent::probes
