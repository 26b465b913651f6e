#include "agent/probes/reflector.hpp"


#include <ctime>
#include <span>
#include <utility>

#include "agent/probes/counter_snapshot.hpp"
#include "platform/clock.hpp"
#include "platform/clock_state.hpp"
#include "platform/random_seed.hpp"
#include "platform/rx_timestamp.hpp"

namespace vantage::agent::probes {
namespace {

// The reflector's stamps travel as unsigned nanoseconds.
std::uint64_t now_ns(clockid_t clock) noexcept {
  return static_cast<std::uint64_t>(platform::clock_ns(clock));
}

bool valid(const ReflectorConfig& c) noexcept {
  return c.max_probe_size >= kProbeHeaderSize && c.max_probe_size <= kMaxProbeSize &&
         c.rate_limit.rate_per_s > 0 && c.rate_limit.burst > 0 && c.max_sources > 0;
}

}  // namespace

Reflector::Reflector(asio::io_context& io, ReflectorConfig config)
    : config_(std::move(config)),
      socket_(io),
      // boot_id tells a restarted reflector from the old one; the seeds key the tables' hashes.
      boot_id_(platform::random_seed()),
      rate_limiter_(config_.rate_limit, config_.max_sources),
      session_table_(config_.max_sources, platform::random_seed()),
      buffer_(std::min(std::max(config_.max_probe_size, kProbeHeaderSize), kMaxProbeSize) + 1) {}

Reflector::~Reflector() = default;

platform::Status Reflector::start() {
  if (!valid(config_)) {
    return platform::Status::error("invalid configuration (probe size, rate limit or source table size)");
  }
  if (platform::Status s = socket_.open({.bind_address = config_.bind_address,
                                         .port = config_.port,
                                         .kernel_timestamps = config_.kernel_timestamps,
                                         .reply_from_destination = config_.reply_from_destination});
      !s) {
    return s;
  }
  socket_.serve(
      buffer_, [this](const ReflectorDatagram& d, std::uint64_t now) { handle_datagram(d.size, d.truncated, now, d.kernel_rx_ns); },
      [this] { receive_errors_.bump(); });
  return platform::Status();
}

void Reflector::stop() { socket_.stop(); }

asio::ip::udp::endpoint Reflector::local_endpoint() const { return socket_.local_endpoint(); }

ReflectorCounters Reflector::counters() const noexcept {
  return snapshot_of<ReflectorCounters>(received_, replied_, dropped_short_, dropped_malformed_,
                                        dropped_foreign_, dropped_rate_limited_, send_errors_,
                                        receive_errors_, rate_limiter_.evictions(), replied_unpinned_);
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
  if (!source_key(socket_.peer(), key)) {
    dropped_malformed_.bump();
    return;
  }
  // Rate-limit before creating a session, so an over-rate or spoofing source cannot churn
  // the session table faster than its own rate allows.
  if (!rate_limiter_.try_take(key, now_mono_ns)) {
    dropped_rate_limited_.bump();
    return;
  }
  key.qualifier = probe.sender_id;
  bool inserted = false;
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
  // The clock extension, when the prober asked for it (probe_packet.hpp): wall-clock stamps and
  // this host's Error Estimate, for one-way delay. Monotonic stamps move onto the wall clock
  // by the one offset read here.
  if (packet.size() >= kClockProbeSize) {
    const bool wall = timestamp_source() == TimestampSource::kKernelRealtime;
    const std::int64_t tx_wall = wall ? static_cast<std::int64_t>(stamp.tx_ns) : platform::realtime_ns();
    const auto rx_wall = static_cast<std::int64_t>(static_cast<std::uint64_t>(tx_wall) - (stamp.tx_ns - stamp.rx_ns));
    stamp_clock_reply(packet, rx_wall, tx_wall,
                      platform::encode_error_estimate(
                          platform::error_estimate_of(platform::ClockStateCell::instance().current())));
  }
  // Same length as the request: the reply is never larger than what the source sent.
  switch (socket_.send_reply(packet)) {
    case ReflectorSocket::Sent::kUnpinned:
      replied_unpinned_.bump();
      [[fallthrough]];
    case ReflectorSocket::Sent::kPinned:
      replied_.bump();
      break;
    case ReflectorSocket::Sent::kFailed:
      send_errors_.bump();
      break;
  }
}

}  // namespace vantage::agent::probes
