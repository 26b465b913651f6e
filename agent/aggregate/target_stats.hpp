// Per-target, per-interval statistics: turns one target's ProbeEvents into the counts,
// RTT percentiles, IPDV jitter and loss direction that a LatencySummary carries.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "agent/aggregate/latency_histogram.hpp"
#include "agent/probes/probe_event.hpp"
#include "vantage/telemetry_generated.h"

namespace vantage::agent::aggregate {

// Every counter is attributed to the interval in which the aggregator learns the fact, never
// to an interval already closed (a summary, once shipped, does not change):
//
//   sent           kSent events (a probe that left the host). kSendError is not a send: the
//                  probe never reached the network, and counting it would report a local
//                  failure as network loss.
//   received       first replies that came back within timeout_ns of their send; they give
//                  the RTT samples. A probe sent in one interval and answered in the next is
//                  sent in the first and received (with its RTT) in the second.
//   lost           probes with no reply by their timeout, counted when the aggregator notices:
//                  in expire()/close_interval(), when a reply shows it came back too late, or
//                  when the sequence window has to reuse its slot. Lost includes the probes
//                  whose reply later arrives late (the RFC 7680 view: a packet past the
//                  threshold is lost), so over a run lost - late is the never-answered count.
//   late           replies for a probe already counted lost, in the interval the reply
//                  arrives; counted, never an RTT. A reply stamped within the timeout whose
//                  probe was expired in this same interval only because it sat in the ring
//                  is taken back from lost and counted as received instead.
//   reordered      received replies whose seq is below the highest seq received before
//                  (RFC 4737 "reordered": arrival behind a later-sent packet).
//   duplicates     further replies for a seq already answered (in time or late).
//   lost_outbound, lost_inbound
//                  UDP echo only. The reflector's session_rx between two replies a and b says
//                  how many probes sent in between reached it; the unanswered ones in that
//                  span are split into that many outbound losses and the rest inbound (which
//                  ones is unknowable, only the counts matter; when a reordered reply later
//                  shows one of them was not lost, its own session_rx says whether the
//                  reflector had counted it, and the split is corrected). The
//                  split is booked when such a probe is counted lost in the current interval
//                  (a probe lost in an earlier interval stays unattributed there). Probes with
//                  no later reply in the same reflector session, across a reflector restart or
//                  session reset, or in a span longer than the window, stay unattributed, so
//                  lost_outbound + lost_inbound <= lost always; the difference is "unknown".
//   send_errors    kSendError events. When one names a tracked probe (TCP: the connect was
//                  refused or reset after the SYN left), that probe is closed: neither
//                  received nor lost.
//   unexpected     replies the window cannot place: never sent, sent too long ago (outside
//                  the window), or arriving before their kSent.
//   invalid        events with impossible contents: a reply with a negative RTT, a negative
//                  dwell or one longer than the RTT itself, an echoed send time that differs
//                  from the one recorded at kSent (a stale or forged reply), a kSent that
//                  repeats or goes behind the newest seq. Such replies are ignored whole: the
//                  probe can still be answered by a good copy, or expire.
//   reflector_restarts, session_resets
//                  UDP echo only: a reply from a new reflector_boot, or a new session_id from
//                  the same boot; either one restarts the loss-direction baseline.
//
// STAMP replies carry a wall-clock send time, not the monotonic one: with send_ns_from_slot the
// RTT is taken from the send_ns recorded at kSent. A reply with session_id 0 (a stateless STAMP
// reflector, or a protocol without counters) carries no loss-direction information: it neither
// moves nor restarts the baseline. The reflector's dwell is subtracted for UDP echo and STAMP.
//
// One-way delay: replies with event.one_way (received in time) feed a forward and a backward
// histogram, allocated on the target's first such reply (a target that never has one costs a
// pointer). At the interval's close the figures are Reported only when every one of those
// replies had both ends synchronised and the combined error bound (the largest
// sender_error_ns + reflector_error_ns of the interval) is below max_error_fraction times the
// smaller of the forward and backward medians; otherwise the status says why (Unsynchronised,
// BoundTooLarge) and the figures are 0. NotMeasured: no reply had the four timestamps. The bound
// and each end's synchronised flag and largest error are carried whatever the status. A negative
// one-way figure (clocks apart by more than the delay) is recorded as 0, so its median fails the
// gate rather than passing a nonsense value.
//
// Sequence numbers are compared by modular distance, so the wrap from 2^64 - 1 to 0 is just
// the next probe. Jitter is RFC 3393 IPDV between consecutive received replies in arrival
// order (the RTT of each minus the RTT of the one received before it, also across an
// interval boundary); with no reordering that is sequence order, and it needs no buffering.
struct TargetStatsConfig {
  probes::ProbeProtocol protocol = probes::ProbeProtocol::kUdpEcho;
  // A reply later than this after its send is late, and an unanswered probe is lost.
  std::int64_t timeout_ns = 2'000'000'000;
  // Probes tracked at once; rounded up to a power of two in [kMinWindow, kMaxWindow]. Must
  // cover probe rate * timeout plus the reordering to expect, or probes are counted lost
  // when their slot is reused.
  std::uint32_t window = 1024;
  // ECMP paths the prober spreads this target's probes over: probe seq's path is seq mod paths.
  // Above 1, every interval also carries per-path counts and RTT (IntervalSummary::paths).
  std::uint32_t paths = 1;
  // One-way figures are reported when the combined error bound is below this fraction of the
  // smaller one-way median ([clock] max_error_fraction).
  double max_error_fraction = 0.1;
  // STAMP: the Session-Sender Identifier the target's probes carry (LatencySummary.stamp_ssid).
  std::uint16_t stamp_ssid = 0;

  static constexpr std::uint32_t kMaxPaths = 64;
  static constexpr std::uint32_t kMinWindow = 16;
  static constexpr std::uint32_t kMaxWindow = 65536;
};

enum class TimestampSource : std::uint8_t { kUserspace = 0, kKernel = 1 };

// One ECMP path of one interval (wire::PathStats): its counts follow the target's own rules
// (a probe is attributed to path seq mod paths), its RTTs are min/mean/max of its received
// replies (no per-path histogram: 64 paths of 1000 targets would cost more than the rest).
struct PathSummary {
  std::uint16_t path = 0;
  std::uint16_t source_port = 0;  // filled by whoever knows the prober's sockets; 0 unknown
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
  std::uint64_t lost = 0;
  std::uint64_t min_ns = 0;  // all RTTs 0 when received is 0
  std::uint64_t max_ns = 0;
  double mean_ns = 0.0;
};

enum class OneWayStatus : std::uint8_t { kNotMeasured = 0, kReported = 1, kUnsynchronised = 2, kBoundTooLarge = 3 };

const char* to_string(OneWayStatus status) noexcept;

struct OneWayHistograms {
  LatencyHistogram forward;
  LatencyHistogram backward;
};

// One interval's one-way delay (wire::OneWay). The figures are 0 and histograms null unless
// status is kReported.
struct OneWaySummary {
  OneWayStatus status = OneWayStatus::kNotMeasured;
  std::int64_t error_bound_ns = 0;
  double max_error_fraction = 0.0;
  bool sender_synchronised = false;     // every one-way reply of the interval
  bool reflector_synchronised = false;
  std::int64_t sender_error_ns = 0;     // largest of the interval
  std::int64_t reflector_error_ns = 0;
  std::uint64_t samples = 0;
  std::uint64_t forward_min_ns = 0;
  std::uint64_t forward_p50_ns = 0;
  std::uint64_t forward_p90_ns = 0;
  std::uint64_t forward_p99_ns = 0;
  std::uint64_t forward_max_ns = 0;
  std::uint64_t backward_min_ns = 0;
  std::uint64_t backward_p50_ns = 0;
  std::uint64_t backward_p90_ns = 0;
  std::uint64_t backward_p99_ns = 0;
  std::uint64_t backward_max_ns = 0;
  // Shared, so that summaries stay cheap to copy and carry no histogram memory when not reported.
  std::shared_ptr<const OneWayHistograms> histograms;
};

// One interval of one target, in the shape of wire::LatencySummary plus the counters the
// wire format does not carry yet. Times are CLOCK_MONOTONIC ns.
struct IntervalSummary {
  probes::ProbeProtocol protocol = probes::ProbeProtocol::kUdpEcho;
  std::uint16_t stamp_ssid = 0;  // STAMP: the SSID the probes carried; 0 otherwise
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;

  std::uint64_t sent = 0;
  std::uint64_t received = 0;
  std::uint64_t lost = 0;
  std::uint64_t late = 0;
  std::uint64_t reordered = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t lost_outbound = 0;
  std::uint64_t lost_inbound = 0;
  std::uint64_t send_errors = 0;
  std::uint64_t unexpected = 0;
  std::uint64_t invalid = 0;
  std::uint64_t reflector_restarts = 0;
  std::uint64_t session_resets = 0;

  // RTT statistics of the received replies, all 0 when there were none.
  std::uint64_t min_ns = 0;
  std::uint64_t max_ns = 0;
  double mean_ns = 0.0;
  double stddev_ns = 0.0;
  std::uint64_t p50_ns = 0;
  std::uint64_t p90_ns = 0;
  std::uint64_t p99_ns = 0;
  std::uint64_t p999_ns = 0;

  std::uint64_t ipdv_count = 0;  // IPDV samples behind the two jitter figures
  double jitter_mean_ns = 0.0;   // mean |IPDV|
  std::uint64_t jitter_p99_ns = 0;

  // Kernel only when every received reply of the interval was kernel-stamped: one user-space
  // stamp can add the socket queueing time to the tail. An interval without replies says
  // user space, claiming nothing.
  TimestampSource timestamp_source = TimestampSource::kUserspace;

  LatencyHistogram rtt;  // the sparse buckets on the wire

  // Per ECMP path, in path order; empty when the target has one path (or, rarely, when memory
  // ran out at the interval's close).
  std::vector<PathSummary> paths;

  OneWaySummary one_way;
};

class TargetStats {
 public:
  explicit TargetStats(const TargetStatsConfig& config, std::int64_t start_ns = 0);

  // Events for other targets must not be passed in; event.target and event.protocol are not
  // looked at (the configured protocol decides whether dwell and loss direction apply).
  void on_event(const probes::ProbeEvent& event) noexcept;

  // Counts every outstanding probe sent more than timeout_ns before now_ns as lost.
  void expire(std::int64_t now_ns) noexcept;

  // expire(now_ns), then returns the interval that ends at now_ns and starts the next one.
  // Outstanding probes, the reorder and IPDV state and the loss-direction baseline carry over.
  IntervalSummary close_interval(std::int64_t now_ns) noexcept;

  std::uint32_t window() const noexcept { return static_cast<std::uint32_t>(slots_.size()); }
  std::uint64_t outstanding() const noexcept;
  // Whether one-way histograms exist (only after a reply with one-way timestamps).
  bool has_one_way_state() const noexcept { return one_way_ != nullptr; }

 private:
  enum class SlotState : std::uint8_t {
    kEmpty,        // never used, or already left the window
    kOutstanding,  // sent, no reply yet
    kAnswered,     // replied within the timeout
    kLost,         // counted lost, no reply yet
    kLate,         // counted lost, then replied
    kClosed,       // send error after kSent: not on the network any more
  };
  enum class Direction : std::uint8_t { kUnknown, kOutbound, kInbound };

  // 32 bytes; the window is the bulk of a target's memory.
  struct Slot {
    std::uint64_t seq = 0;
    std::int64_t send_ns = 0;
    std::uint32_t loss_number = 0;  // value of losses_ when this probe was counted lost
    // Loss-direction span this probe fell in: the reply that closed it is span_offset seqs
    // later and carried session_rx == span_rx. 0 offset: in no span.
    std::uint32_t span_rx = 0;
    std::uint16_t span_offset = 0;
    SlotState state = SlotState::kEmpty;
    Direction direction = Direction::kUnknown;
  };

  Slot* find(std::uint64_t seq) noexcept;
  Slot& slot_for(std::uint64_t seq) noexcept { return slots_[static_cast<std::size_t>(seq & mask_)]; }
  bool in_window(std::uint64_t seq) const noexcept;
  bool lost_this_interval(const Slot& slot) const noexcept;

  void on_sent(const probes::ProbeEvent& event) noexcept;
  void on_reply(const probes::ProbeEvent& event) noexcept;
  void on_send_error(const probes::ProbeEvent& event) noexcept;

  struct PathCounts {
    std::uint64_t sent = 0;
    std::uint64_t received = 0;
    std::uint64_t lost = 0;
    std::uint64_t min_ns = 0;
    std::uint64_t max_ns = 0;
    double sum_ns = 0.0;
  };
  PathCounts* path_of(std::uint64_t seq) noexcept {
    return paths_.empty() ? nullptr : &paths_[static_cast<std::size_t>(seq % paths_.size())];
  }

  // One-way delay of the current interval, allocated on the first reply that has it.
  struct OneWayState {
    OneWayHistograms h;
    std::uint64_t samples = 0;
    bool sender_synchronised = true;
    bool reflector_synchronised = true;
    std::int64_t sender_error_ns = 0;
    std::int64_t reflector_error_ns = 0;
    std::int64_t error_bound_ns = 0;
  };
  void record_one_way(const probes::ProbeEvent& event) noexcept;
  OneWaySummary close_one_way() noexcept;

  void declare_lost(Slot& slot) noexcept;
  void undo_loss(Slot& slot) noexcept;
  void retire_before(std::uint64_t new_oldest) noexcept;
  void record_received(const probes::ProbeEvent& event, std::uint64_t rtt_ns) noexcept;
  void attribute_direction(const probes::ProbeEvent& event) noexcept;
  void reconcile_direction(Slot& slot, const probes::ProbeEvent& event) noexcept;
  bool retag(std::uint64_t span_end, Direction from, Direction to) noexcept;

  TargetStatsConfig config_;
  std::uint64_t mask_ = 0;
  std::vector<Slot> slots_;  // sized once, indexed by seq & mask_

  // The window is (oldest_ - 1, newest_sent_]; everything below oldest_ is resolved.
  bool any_sent_ = false;
  std::uint64_t newest_sent_ = 0;
  std::uint64_t oldest_ = 0;

  bool any_received_ = false;
  std::uint64_t highest_received_ = 0;

  bool has_previous_rtt_ = false;
  std::uint64_t previous_rtt_ns_ = 0;

  // Loss-direction baseline: the reply with the highest seq seen in the current session.
  bool has_baseline_ = false;
  std::uint64_t baseline_seq_ = 0;
  std::uint64_t baseline_boot_ = 0;
  std::uint32_t baseline_session_ = 0;
  std::uint32_t baseline_rx_ = 0;

  // Running count of loss declarations; a slot lost at number n was lost in this interval
  // when n - interval_losses_ < losses_ - interval_losses_ (modular, so it never wraps wrong).
  std::uint32_t losses_ = 0;
  std::uint32_t interval_losses_ = 0;

  bool all_kernel_ = true;
  double ipdv_abs_sum_ = 0.0;
  LatencyHistogram ipdv_;
  IntervalSummary current_;
  std::vector<PathCounts> paths_;  // this interval's, per path; empty with one path
  std::unique_ptr<OneWayState> one_way_;
};

// Appends a wire::LatencySummary for summary to fbb. target is the label to ship (host:port
// or a pseudonym). Counters above the wire's 32 bits saturate; the histogram goes as sparse
// buckets with histogram_scheme = LatencyHistogram::kScheme, or scheme 0 and no vector when
// the interval had no RTT. Every counter of IntervalSummary is written, plus the RTT
// histogram's overflow() and dropped() so a receiver can rebuild it with from_sparse().
// UDP echo and STAMP summaries also carry wire::OneWay (summary.one_way).
// unresolved: the target's name had no address (LatencySummary.unresolved).
flatbuffers::Offset<wire::LatencySummary> build_latency_summary(flatbuffers::FlatBufferBuilder& fbb,
                                                                std::string_view target,
                                                                const IntervalSummary& summary,
                                                                bool unresolved = false);

}  // namespace vantage::agent::aggregate
