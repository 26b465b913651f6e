// TCP connect prober: times SYN -> established against each target at a jittered rate, closes
// the connection at once and reports kSent/kReply/kSendError events into the aggregator's ring.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <vector>

#include "agent/probes/event_ring.hpp"
#include "agent/probes/probe_event.hpp"
#include "agent/probes/probe_schedule.hpp"
#include "agent/probes/schedule_timer.hpp"
#include "platform/result.hpp"
#include "platform/spsc_ring.hpp"
#include "platform/stat_counter.hpp"

namespace vantage::agent::probes {

struct TcpTarget {
  std::uint32_t target = 0;  // copied into every event (index into the agent's target list)
  asio::ip::tcp::endpoint endpoint;
  double rate_per_s = 1.0;  // > 0 and <= kMaxTcpRatePerS
  // A connect still pending after this is closed without an event: the aggregator already
  // counts a kSent without a kReply as lost, and the socket must not linger in SYN_SENT.
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);
  std::uint8_t dscp = 0;  // 0..63, written as IP_TOS / IPV6_TCLASS = dscp << 2
  // False: a name without an address yet; not probed until set_address() gives it one.
  bool resolved = true;
};

inline constexpr double kMaxTcpRatePerS = 1000.0;
// Connects in flight per target; sized from rate * timeout at start() and capped here.
inline constexpr std::size_t kMaxTcpSlotsPerTarget = 64;

struct TcpProberConfig {
  std::vector<TcpTarget> targets;
  // Each gap between two probes of a target is interval * (1 +- jitter), uniformly random, and
  // the first probe lands at a random point of the first interval, so agents started together
  // (a fleet rollout, a power cut) drift apart instead of probing in step. 0..0.5.
  double jitter = 0.1;
  // The slot grid connects start on (as UdpProberConfig::grid).
  SlotGrid grid;
};

// A snapshot of monotonic statistics; each field is individually exact.
struct TcpProberCounters {
  std::uint64_t sent = 0;            // connects started (kSent emitted)
  std::uint64_t established = 0;     // kReply emitted
  std::uint64_t refused = 0;         // refused or reset by the peer (kSendError emitted)
  std::uint64_t connect_errors = 0;  // other connect failures, e.g. unreachable (kSendError)
  std::uint64_t timeouts = 0;        // cancelled after the target's timeout (no event)
  std::uint64_t open_errors = 0;     // socket() failed, e.g. out of descriptors (kSendError)
  std::uint64_t slots_busy = 0;      // a probe was due but every slot still had one in flight
  std::uint64_t ring_full = 0;       // events dropped because the ring was full
};

// Thread contract as for Reflector: start(), the handlers and stop()'s posted work run on the
// io_context's thread; stop() and counters() may be called from any thread after start().
// Destroy it only after stop() once the io_context has no more of its
// handlers to run (run() returned): pending operations keep their handler memory in the prober.
//
// Per probe, nothing is allocated in user space: each target owns a fixed pool of slots (a
// socket, a timeout timer and handler memory for both operations), allocated at start(), and
// Asio's reactor recycles its per-descriptor state. What remains per attempt is the kernel's
// socket itself, which a connect probe cannot avoid.
class TcpProber {
 public:
  TcpProber(asio::io_context& io, TcpProberConfig config, EventRing& ring);
  ~TcpProber();

  TcpProber(const TcpProber&) = delete;
  TcpProber& operator=(const TcpProber&) = delete;

  // Validates the config (Errc::kInvalid), allocates the slots and schedules the
  // first probe of every target.
  [[nodiscard]] platform::Status start();

  // Stops scheduling and closes every in-flight connect (no events for those), on the
  // io_context's thread. Idempotent.
  void stop();

  // Starts no further connects; those in flight still complete, fail or time out with their
  // events, so a measurement ends with every probe resolved. Posted like stop(); idempotent.
  void stop_sending();

  // Gives target `position` (in config.targets) a new address, or none (not probed meanwhile);
  // its sequence numbers continue. Posted to the io_context's thread; any thread.
  // applied(probed), when given, runs on that thread once the change is made: false when the
  // target is not probed (no address, or one its socket cannot serve).
  void set_address(std::size_t position, std::optional<asio::ip::address> address,
                   std::function<void(bool probed)> applied = {});

  TcpProberCounters counters() const noexcept;

 private:
  struct Slot;
  struct Target;

  // Single writer (the io_context thread), any reader.
  using Counter = platform::StatCounter;

  void arm_schedule();
  void launch(Target& target, std::int64_t now_ns);
  void on_connected(Slot& slot, const std::error_code& ec);
  void on_timeout(Slot& slot, const std::error_code& ec);
  void emit(const ProbeEvent& event) noexcept;

  asio::io_context& io_;
  TcpProberConfig config_;
  EventRing& ring_;
  ScheduleTimer schedule_timer_;
  std::vector<std::unique_ptr<Target>> targets_;
  ProbeSchedule schedule_;  // parallel to targets_
  bool stopping_ = false;
  bool sending_stopped_ = false;

  Counter sent_, established_, refused_, connect_errors_, timeouts_, open_errors_, slots_busy_, ring_full_;
};

}  // namespace vantage::agent::probes
