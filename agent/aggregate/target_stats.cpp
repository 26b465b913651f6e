// TargetStats: the sequence window, loss/late/duplicate/reorder accounting, RTT and IPDV
// histograms, loss direction from the reflector's counters, and the wire LatencySummary.
#include "agent/aggregate/target_stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <new>

namespace vantage::agent::aggregate {

namespace {

using probes::ProbeEvent;
using probes::ProbeEventKind;
using probes::ProbeProtocol;

// Modular sequence arithmetic: b is "after" a when b - a, taken mod 2^64, is in (0, 2^63).
constexpr std::uint64_t kHalfRange = std::uint64_t{1} << 63;

constexpr bool is_after(std::uint64_t b, std::uint64_t a) noexcept {
  const std::uint64_t d = b - a;
  return d != 0 && d < kHalfRange;
}

// Timestamps come from other threads and, for echoed fields, from the network: a difference
// must not be signed overflow (undefined behaviour) even for nonsense inputs.
std::int64_t difference(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t out = 0;
  if (__builtin_sub_overflow(a, b, &out)) {
    return a < b ? std::numeric_limits<std::int64_t>::min() : std::numeric_limits<std::int64_t>::max();
  }
  return out;
}

std::uint32_t to_wire_count(std::uint64_t v) noexcept {
  return v > UINT32_MAX ? UINT32_MAX : static_cast<std::uint32_t>(v);
}

std::int64_t to_wire_ns(std::uint64_t v) noexcept {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  return static_cast<std::int64_t>(v > kMax ? kMax : v);
}

wire::Protocol to_wire(ProbeProtocol protocol) noexcept {
  switch (protocol) {
    case ProbeProtocol::kTcpConnect:
      return wire::Protocol::TcpConnect;
    case ProbeProtocol::kIcmpEcho:
      return wire::Protocol::Icmp;
    case ProbeProtocol::kStamp:
      return wire::Protocol::Stamp;
    case ProbeProtocol::kUdpEcho:
      break;
  }
  return wire::Protocol::UdpEcho;
}

// Protocols whose replies carry the reflector's receive and send times.
constexpr bool has_dwell(ProbeProtocol protocol) noexcept {
  return protocol == ProbeProtocol::kUdpEcho || protocol == ProbeProtocol::kStamp;
}

std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t out = 0;
  return __builtin_add_overflow(a, b, &out) ? std::numeric_limits<std::int64_t>::max() : out;
}

wire::OneWayStatus to_wire(OneWayStatus status) noexcept {
  switch (status) {
    case OneWayStatus::kReported:
      return wire::OneWayStatus::Reported;
    case OneWayStatus::kUnsynchronised:
      return wire::OneWayStatus::Unsynchronised;
    case OneWayStatus::kBoundTooLarge:
      return wire::OneWayStatus::BoundTooLarge;
    case OneWayStatus::kNotMeasured:
      break;
  }
  return wire::OneWayStatus::NotMeasured;
}

std::uint32_t window_size(std::uint32_t requested) noexcept {
  const std::uint32_t clamped =
      std::clamp(requested, TargetStatsConfig::kMinWindow, TargetStatsConfig::kMaxWindow);
  return std::bit_ceil(clamped);
}

}  // namespace

const char* to_string(OneWayStatus status) noexcept {
  switch (status) {
    case OneWayStatus::kReported:
      return "reported";
    case OneWayStatus::kUnsynchronised:
      return "unsynchronised";
    case OneWayStatus::kBoundTooLarge:
      return "bound too large";
    case OneWayStatus::kNotMeasured:
      break;
  }
  return "not measured";
}

TargetStats::TargetStats(const TargetStatsConfig& config, std::int64_t start_ns)
    : config_(config), slots_(window_size(config.window)) {
  config_.window = static_cast<std::uint32_t>(slots_.size());
  mask_ = slots_.size() - 1;
  current_.protocol = config_.protocol;
  current_.stamp_ssid = config_.stamp_ssid;
  current_.start_ns = start_ns;
  config_.paths = std::clamp<std::uint32_t>(config_.paths, 1, TargetStatsConfig::kMaxPaths);
  if (config_.paths > 1) paths_.resize(config_.paths);
}

void TargetStats::on_event(const ProbeEvent& event) noexcept {
  switch (event.kind) {
    case ProbeEventKind::kSent:
      on_sent(event);
      return;
    case ProbeEventKind::kReply:
      on_reply(event);
      return;
    case ProbeEventKind::kSendError:
      on_send_error(event);
      return;
  }
  ++current_.invalid;  // a kind this build does not know
}

bool TargetStats::in_window(std::uint64_t seq) const noexcept {
  return any_sent_ && newest_sent_ - seq < slots_.size();
}

TargetStats::Slot* TargetStats::find(std::uint64_t seq) noexcept {
  if (!in_window(seq)) {
    return nullptr;
  }
  Slot& slot = slot_for(seq);
  return slot.state != SlotState::kEmpty && slot.seq == seq ? &slot : nullptr;
}

bool TargetStats::lost_this_interval(const Slot& slot) const noexcept {
  return slot.state == SlotState::kLost && static_cast<std::uint32_t>(slot.loss_number - interval_losses_) <
                                               static_cast<std::uint32_t>(losses_ - interval_losses_);
}

void TargetStats::on_sent(const ProbeEvent& event) noexcept {
  if (!any_sent_) {
    any_sent_ = true;
    oldest_ = event.seq;
  } else if (!is_after(event.seq, newest_sent_)) {
    // Probers number their probes in send order; a repeat or a step back is a prober bug
    // and would corrupt the window if taken.
    ++current_.invalid;
    return;
  } else {
    // The slots the new seq pushes out of the window must be settled before reuse.
    const std::uint64_t window_start = event.seq - mask_;
    if (is_after(window_start, oldest_)) {
      retire_before(window_start);
    }
  }
  newest_sent_ = event.seq;
  slot_for(event.seq) = Slot{event.seq, event.send_ns, 0, 0, 0, SlotState::kOutstanding, Direction::kUnknown};
  ++current_.sent;
  if (PathCounts* p = path_of(event.seq)) ++p->sent;
}

void TargetStats::retire_before(std::uint64_t new_oldest) noexcept {
  if (new_oldest - oldest_ >= slots_.size()) {
    // A jump of a whole window or more: every tracked probe is older than new_oldest, and
    // walking seq by seq could take up to 2^64 steps.
    for (Slot& slot : slots_) {
      if (slot.state == SlotState::kOutstanding) {
        declare_lost(slot);
      }
    }
  } else {
    for (std::uint64_t seq = oldest_; seq != new_oldest; ++seq) {
      Slot& slot = slot_for(seq);
      if (slot.seq == seq && slot.state == SlotState::kOutstanding) {
        declare_lost(slot);
      }
    }
  }
  oldest_ = new_oldest;
}

void TargetStats::expire(std::int64_t now_ns) noexcept {
  if (!any_sent_) {
    return;
  }
  // Probes time out in send order, so a cursor that stops at the first one still in time
  // makes this O(1) amortised instead of a window scan per call.
  while (!is_after(oldest_, newest_sent_)) {
    Slot& slot = slot_for(oldest_);
    if (slot.seq == oldest_ && slot.state == SlotState::kOutstanding) {
      if (difference(now_ns, slot.send_ns) <= config_.timeout_ns) {
        return;
      }
      declare_lost(slot);
    }
    ++oldest_;
  }
}

void TargetStats::declare_lost(Slot& slot) noexcept {
  slot.state = SlotState::kLost;
  slot.loss_number = losses_++;
  ++current_.lost;
  if (PathCounts* p = path_of(slot.seq)) ++p->lost;
  if (slot.direction == Direction::kOutbound) {
    ++current_.lost_outbound;
  } else if (slot.direction == Direction::kInbound) {
    ++current_.lost_inbound;
  }
}

void TargetStats::undo_loss(Slot& slot) noexcept {
  --current_.lost;
  // Only a loss of this interval is undone (as the target's own lost), so the path's is above 0.
  if (PathCounts* p = path_of(slot.seq); p != nullptr && p->lost != 0) --p->lost;
  if (slot.direction == Direction::kOutbound) {
    --current_.lost_outbound;
  } else if (slot.direction == Direction::kInbound) {
    --current_.lost_inbound;
  }
  slot.state = SlotState::kOutstanding;
}

void TargetStats::on_send_error(const ProbeEvent& event) noexcept {
  ++current_.send_errors;
  Slot* slot = find(event.seq);
  if (slot == nullptr) {
    return;
  }
  if (slot->state == SlotState::kOutstanding) {
    slot->state = SlotState::kClosed;
  } else if (lost_this_interval(*slot)) {
    // Expired a moment before the error was read from the ring: the network did not lose it.
    undo_loss(*slot);
    slot->state = SlotState::kClosed;
  }
}

void TargetStats::on_reply(const ProbeEvent& event) noexcept {
  Slot* slot = find(event.seq);
  if (slot == nullptr || slot->state == SlotState::kClosed) {
    ++current_.unexpected;
    return;
  }
  // STAMP replies echo a wall-clock send time: the slot's monotonic one is the RTT's start.
  if (!event.send_ns_from_slot && event.send_ns != slot->send_ns) {
    ++current_.invalid;
    return;
  }
  if (slot->state == SlotState::kAnswered || slot->state == SlotState::kLate) {
    ++current_.duplicates;
    return;
  }
  const std::int64_t raw_ns = difference(event.receive_ns, slot->send_ns);
  const std::int64_t dwell_ns = has_dwell(config_.protocol) ? event.reflector_dwell_ns : 0;
  if (raw_ns < 0 || dwell_ns < 0 || dwell_ns > raw_ns) {
    ++current_.invalid;
    return;
  }
  const bool in_time = raw_ns <= config_.timeout_ns;

  if (slot->state == SlotState::kLost) {
    if (in_time && lost_this_interval(*slot)) {
      // Expired only because the reply was still in the ring when the interval closed its
      // books; the reply itself says it was in time.
      undo_loss(*slot);
    } else {
      slot->state = SlotState::kLate;
      ++current_.late;
      attribute_direction(event);
      return;
    }
  }
  if (!in_time) {
    declare_lost(*slot);
    slot->state = SlotState::kLate;
    ++current_.late;
    attribute_direction(event);
    return;
  }
  reconcile_direction(*slot, event);
  slot->state = SlotState::kAnswered;
  record_received(event, static_cast<std::uint64_t>(raw_ns - dwell_ns));
  if (event.one_way) record_one_way(event);
  attribute_direction(event);
}

void TargetStats::record_one_way(const ProbeEvent& event) noexcept {
  if (one_way_ == nullptr) {
    // Once per target that has one-way timestamps; without memory the sample is skipped.
    one_way_.reset(new (std::nothrow) OneWayState);
    if (one_way_ == nullptr) return;
  }
  OneWayState& w = *one_way_;
  ++w.samples;
  w.h.forward.record(event.forward_ns > 0 ? static_cast<std::uint64_t>(event.forward_ns) : 0);
  w.h.backward.record(event.backward_ns > 0 ? static_cast<std::uint64_t>(event.backward_ns) : 0);
  w.sender_synchronised = w.sender_synchronised && event.sender_synchronised;
  w.reflector_synchronised = w.reflector_synchronised && event.reflector_synchronised;
  const std::int64_t sender_error = std::max<std::int64_t>(event.sender_error_ns, 0);
  const std::int64_t reflector_error = std::max<std::int64_t>(event.reflector_error_ns, 0);
  w.sender_error_ns = std::max(w.sender_error_ns, sender_error);
  w.reflector_error_ns = std::max(w.reflector_error_ns, reflector_error);
  w.error_bound_ns = std::max(w.error_bound_ns, saturating_add(sender_error, reflector_error));
}

OneWaySummary TargetStats::close_one_way() noexcept {
  OneWaySummary out;
  out.max_error_fraction = config_.max_error_fraction;
  if (one_way_ == nullptr || one_way_->samples == 0) return out;
  OneWayState& w = *one_way_;
  out.samples = w.samples;
  out.sender_synchronised = w.sender_synchronised;
  out.reflector_synchronised = w.reflector_synchronised;
  out.sender_error_ns = w.sender_error_ns;
  out.reflector_error_ns = w.reflector_error_ns;
  out.error_bound_ns = w.error_bound_ns;
  const std::uint64_t forward_p50 = w.h.forward.percentile(50.0);
  const std::uint64_t backward_p50 = w.h.backward.percentile(50.0);
  const double limit = config_.max_error_fraction * static_cast<double>(std::min(forward_p50, backward_p50));
  if (!w.sender_synchronised || !w.reflector_synchronised) {
    out.status = OneWayStatus::kUnsynchronised;
  } else if (!(static_cast<double>(w.error_bound_ns) < limit)) {
    out.status = OneWayStatus::kBoundTooLarge;
  } else {
    out.status = OneWayStatus::kReported;
    out.forward_min_ns = w.h.forward.min();
    out.forward_p50_ns = forward_p50;
    out.forward_p90_ns = w.h.forward.percentile(90.0);
    out.forward_p99_ns = w.h.forward.percentile(99.0);
    out.forward_max_ns = w.h.forward.max();
    out.backward_min_ns = w.h.backward.min();
    out.backward_p50_ns = backward_p50;
    out.backward_p90_ns = w.h.backward.percentile(90.0);
    out.backward_p99_ns = w.h.backward.percentile(99.0);
    out.backward_max_ns = w.h.backward.max();
    // Exact-sized copies, so the state keeps its buffers for the next interval; without memory
    // the summary goes without the histograms (the figures above stand).
    try {
      auto h = std::make_shared<OneWayHistograms>();
      if (h->forward.try_assign(w.h.forward) && h->backward.try_assign(w.h.backward)) out.histograms = std::move(h);
    } catch (const std::bad_alloc&) {
    }
  }
  w.h.forward.reset();
  w.h.backward.reset();
  w.samples = 0;
  w.sender_synchronised = true;
  w.reflector_synchronised = true;
  w.sender_error_ns = 0;
  w.reflector_error_ns = 0;
  w.error_bound_ns = 0;
  return out;
}

void TargetStats::record_received(const ProbeEvent& event, std::uint64_t rtt_ns) noexcept {
  ++current_.received;
  current_.rtt.record(rtt_ns);
  if (PathCounts* p = path_of(event.seq)) {
    p->min_ns = p->received == 0 ? rtt_ns : std::min(p->min_ns, rtt_ns);
    p->max_ns = std::max(p->max_ns, rtt_ns);
    p->sum_ns += static_cast<double>(rtt_ns);
    ++p->received;
  }
  if (!event.kernel_rx_timestamp) {
    all_kernel_ = false;
  }
  if (any_received_ && is_after(highest_received_, event.seq)) {
    ++current_.reordered;
  } else {
    highest_received_ = event.seq;
    any_received_ = true;
  }
  if (has_previous_rtt_) {
    const std::uint64_t ipdv =
        rtt_ns > previous_rtt_ns_ ? rtt_ns - previous_rtt_ns_ : previous_rtt_ns_ - rtt_ns;
    ipdv_.record(ipdv);
    ipdv_abs_sum_ += static_cast<double>(ipdv);
  }
  has_previous_rtt_ = true;
  previous_rtt_ns_ = rtt_ns;
}

void TargetStats::attribute_direction(const ProbeEvent& event) noexcept {
  // session_id 0: the reply carries no counters (a stateless STAMP reflector).
  if (!has_dwell(config_.protocol) || event.session_id == 0) {
    return;
  }
  const auto set_baseline = [&] {
    has_baseline_ = true;
    baseline_seq_ = event.seq;
    baseline_boot_ = event.reflector_boot;
    baseline_session_ = event.session_id;
    baseline_rx_ = event.session_rx;
  };
  if (!has_baseline_) {
    set_baseline();
    return;
  }
  // Only a reply newer than the baseline moves it: a reordered reply from before a reflector
  // restart must not flip the baseline back to the old instance.
  if (!is_after(event.seq, baseline_seq_)) {
    return;
  }
  if (event.reflector_boot != baseline_boot_) {
    ++current_.reflector_restarts;
    set_baseline();
    return;
  }
  if (event.session_id != baseline_session_) {
    ++current_.session_resets;
    set_baseline();
    return;
  }
  if (!in_window(baseline_seq_)) {
    set_baseline();  // the probes in between are no longer tracked
    return;
  }

  // Count sent probes rather than seq steps: a seq consumed by a send error never left.
  std::uint64_t sent_between = 0;
  for (std::uint64_t seq = baseline_seq_ + 1; seq != event.seq; ++seq) {
    const Slot& slot = slot_for(seq);
    if (slot.seq == seq && slot.state != SlotState::kEmpty && slot.state != SlotState::kClosed) {
      ++sent_between;
    }
  }
  const std::uint32_t rx_delta = event.session_rx - baseline_rx_;
  // rx_delta includes this reply's own probe. More accepted than sent (a probe duplicated on
  // the way out, or a forged counter) leaves the span unexplained rather than negative.
  if (rx_delta == 0 || rx_delta - 1u > sent_between) {
    set_baseline();
    return;
  }
  std::uint64_t outbound = sent_between - (rx_delta - 1u);

  // Which of the unanswered probes were the outbound ones is unknowable; only the counts are
  // booked, and a tagged probe whose reply still arrives in time simply never counts.
  for (std::uint64_t seq = baseline_seq_ + 1; seq != event.seq; ++seq) {
    Slot& slot = slot_for(seq);
    if (slot.seq != seq) {
      continue;
    }
    slot.span_offset = static_cast<std::uint16_t>(event.seq - seq);  // < window <= 65536
    slot.span_rx = event.session_rx;
    if (slot.direction != Direction::kUnknown ||
        (slot.state != SlotState::kOutstanding && slot.state != SlotState::kLost)) {
      continue;
    }
    if (outbound > 0) {
      --outbound;
      slot.direction = Direction::kOutbound;
    } else {
      slot.direction = Direction::kInbound;
    }
    if (lost_this_interval(slot)) {
      ++(slot.direction == Direction::kOutbound ? current_.lost_outbound : current_.lost_inbound);
    }
  }
  set_baseline();
}

// An unanswered probe of a span replied after all (reordered): the tags were handed out on
// the assumption that it was missing. Its session_rx tells whether the reflector counted it
// before the reply that closed the span: if so, it was one of the probes the reflector saw and
// an outbound tag it held belongs to another probe of the span; if not, the span's outbound
// count included it, and an inbound tag it held means one outbound tag too many.
void TargetStats::reconcile_direction(Slot& slot, const ProbeEvent& event) noexcept {
  const Direction tag = slot.direction;
  slot.direction = Direction::kUnknown;
  if (tag == Direction::kUnknown || slot.span_offset == 0 || !has_baseline_ ||
      event.reflector_boot != baseline_boot_ || event.session_id != baseline_session_) {
    return;
  }
  const bool seen_before_end = static_cast<std::int32_t>(event.session_rx - slot.span_rx) < 0;
  const std::uint64_t span_end = slot.seq + slot.span_offset;
  if (tag == Direction::kOutbound && seen_before_end) {
    retag(span_end, Direction::kInbound, Direction::kOutbound);
  } else if (tag == Direction::kInbound && !seen_before_end) {
    retag(span_end, Direction::kOutbound, Direction::kInbound);
  }
}

bool TargetStats::retag(std::uint64_t span_end, Direction from, Direction to) noexcept {
  // Walk back through the span; it ends at the first probe that belongs to another span.
  for (std::uint64_t seq = span_end - 1; seq != span_end - slots_.size() && in_window(seq); --seq) {
    Slot& slot = slot_for(seq);
    if (slot.seq != seq) {
      continue;
    }
    if (seq + slot.span_offset != span_end) {
      return false;
    }
    const bool counted = lost_this_interval(slot);
    if (slot.direction != from || (slot.state != SlotState::kOutstanding && !counted)) {
      continue;
    }
    slot.direction = to;
    if (counted) {
      --(from == Direction::kOutbound ? current_.lost_outbound : current_.lost_inbound);
      ++(to == Direction::kOutbound ? current_.lost_outbound : current_.lost_inbound);
    }
    return true;
  }
  return false;
}

std::uint64_t TargetStats::outstanding() const noexcept {
  return static_cast<std::uint64_t>(std::count_if(
      slots_.begin(), slots_.end(), [](const Slot& slot) { return slot.state == SlotState::kOutstanding; }));
}

IntervalSummary TargetStats::close_interval(std::int64_t now_ns) noexcept {
  expire(now_ns);

  // The RTT histogram moves out first, so that copying the rest of the summary allocates nothing.
  LatencyHistogram rtt_pages = std::move(current_.rtt);
  IntervalSummary out = current_;
  out.end_ns = now_ns;
  const LatencyHistogram& rtt = rtt_pages;
  out.min_ns = rtt.min();
  out.max_ns = rtt.max();
  out.mean_ns = rtt.mean();
  out.stddev_ns = rtt.stddev();
  out.p50_ns = rtt.percentile(50.0);
  out.p90_ns = rtt.percentile(90.0);
  out.p99_ns = rtt.percentile(99.0);
  out.p999_ns = rtt.percentile(99.9);
  out.ipdv_count = ipdv_.count();
  out.jitter_mean_ns = out.ipdv_count != 0 ? ipdv_abs_sum_ / static_cast<double>(out.ipdv_count) : 0.0;
  out.jitter_p99_ns = ipdv_.percentile(99.0);
  out.timestamp_source =
      out.received != 0 && all_kernel_ ? TimestampSource::kKernel : TimestampSource::kUserspace;
  // The summary takes an exact-sized copy of the pages, the one allocation a steady target makes
  // per interval, so that the interval's buffer is kept for the next one; when that allocation
  // fails (this function cannot throw) the summary takes the buffer itself.
  if (!out.rtt.try_assign(rtt_pages)) {
    out.rtt = std::move(rtt_pages);
  }
  out.one_way = close_one_way();
  if (!paths_.empty()) {
    // A few KiB at most; without memory the interval goes without its per-path detail.
    try {
      out.paths.reserve(paths_.size());
      for (std::size_t i = 0; i < paths_.size(); ++i) {
        const PathCounts& p = paths_[i];
        out.paths.push_back(PathSummary{
            .path = static_cast<std::uint16_t>(i),
            .source_port = 0,
            .sent = p.sent,
            .received = p.received,
            .lost = p.lost,
            .min_ns = p.min_ns,
            .max_ns = p.max_ns,
            .mean_ns = p.received != 0 ? p.sum_ns / static_cast<double>(p.received) : 0.0,
        });
      }
    } catch (const std::bad_alloc&) {
      out.paths.clear();
    }
    std::fill(paths_.begin(), paths_.end(), PathCounts{});
  }

  current_ = IntervalSummary{};
  current_.protocol = config_.protocol;
  current_.stamp_ssid = config_.stamp_ssid;
  current_.start_ns = now_ns;
  rtt_pages.reset();
  current_.rtt = std::move(rtt_pages);
  ipdv_.reset();
  ipdv_abs_sum_ = 0.0;
  all_kernel_ = true;
  interval_losses_ = losses_;
  return out;
}

namespace {

// Each interval counter beside its wire setter, a named pair so that no two can be swapped. The
// first version's counters go before the histogram and those appended since after it, so the
// table keeps the layout it always had.
struct WireCount {
  std::uint64_t IntervalSummary::*count;
  void (wire::LatencySummaryBuilder::*add)(std::uint32_t);
  bool appended;
};
using Out = wire::LatencySummaryBuilder;
constexpr WireCount kWireCounts[] = {
    {&IntervalSummary::sent, &Out::add_sent, false},
    {&IntervalSummary::received, &Out::add_received, false},
    {&IntervalSummary::lost, &Out::add_lost, false},
    {&IntervalSummary::late, &Out::add_late, false},
    {&IntervalSummary::reordered, &Out::add_reordered, false},
    {&IntervalSummary::duplicates, &Out::add_duplicates, false},
    {&IntervalSummary::lost_outbound, &Out::add_lost_outbound, false},
    {&IntervalSummary::lost_inbound, &Out::add_lost_inbound, false},
    {&IntervalSummary::send_errors, &Out::add_send_errors, true},
    {&IntervalSummary::unexpected, &Out::add_unexpected, true},
    {&IntervalSummary::invalid, &Out::add_invalid, true},
    {&IntervalSummary::reflector_restarts, &Out::add_reflector_restarts, true},
    {&IntervalSummary::session_resets, &Out::add_session_resets, true},
    {&IntervalSummary::ipdv_count, &Out::add_ipdv_count, true},
};

flatbuffers::Offset<flatbuffers::Vector<const wire::HistogramBucket*>> sparse_buckets(
    flatbuffers::FlatBufferBuilder& fbb, const LatencyHistogram& h) {
  wire::HistogramBucket* out = nullptr;
  const auto offset = fbb.CreateUninitializedVectorOfStructs(h.nonzero_buckets(), &out);
  h.for_each_nonzero([&out](SparseBucket bucket) { *out++ = wire::HistogramBucket(bucket.index, bucket.count); });
  return offset;
}

flatbuffers::Offset<wire::OneWay> build_one_way(flatbuffers::FlatBufferBuilder& fbb, const OneWaySummary& w) {
  flatbuffers::Offset<flatbuffers::Vector<const wire::HistogramBucket*>> forward;
  flatbuffers::Offset<flatbuffers::Vector<const wire::HistogramBucket*>> backward;
  std::uint8_t scheme = 0;
  if (w.status == OneWayStatus::kReported && w.histograms != nullptr && w.histograms->forward.count() != 0) {
    scheme = w.histograms->forward.scheme();
    forward = sparse_buckets(fbb, w.histograms->forward);
    backward = sparse_buckets(fbb, w.histograms->backward);
  }
  wire::OneWayBuilder out(fbb);
  out.add_error_bound_ns(w.error_bound_ns);
  out.add_sender_error_ns(w.sender_error_ns);
  out.add_reflector_error_ns(w.reflector_error_ns);
  out.add_forward_min_ns(to_wire_ns(w.forward_min_ns));
  out.add_forward_p50_ns(to_wire_ns(w.forward_p50_ns));
  out.add_forward_p90_ns(to_wire_ns(w.forward_p90_ns));
  out.add_forward_p99_ns(to_wire_ns(w.forward_p99_ns));
  out.add_forward_max_ns(to_wire_ns(w.forward_max_ns));
  out.add_backward_min_ns(to_wire_ns(w.backward_min_ns));
  out.add_backward_p50_ns(to_wire_ns(w.backward_p50_ns));
  out.add_backward_p90_ns(to_wire_ns(w.backward_p90_ns));
  out.add_backward_p99_ns(to_wire_ns(w.backward_p99_ns));
  out.add_backward_max_ns(to_wire_ns(w.backward_max_ns));
  out.add_max_error_fraction(static_cast<float>(w.max_error_fraction));
  out.add_samples(to_wire_count(w.samples));
  if (!forward.IsNull()) {
    out.add_forward_histogram(forward);
    out.add_backward_histogram(backward);
  }
  out.add_status(to_wire(w.status));
  out.add_sender_synchronised(w.sender_synchronised);
  out.add_reflector_synchronised(w.reflector_synchronised);
  out.add_histogram_scheme(scheme);
  return out.Finish();
}

}  // namespace

flatbuffers::Offset<wire::LatencySummary> build_latency_summary(flatbuffers::FlatBufferBuilder& fbb,
                                                                std::string_view target,
                                                                const IntervalSummary& summary,
                                                                bool unresolved) {
  const auto name = fbb.CreateString(target.data(), target.size());
  flatbuffers::Offset<flatbuffers::Vector<const wire::PathStats*>> paths;
  if (!summary.paths.empty()) {
    wire::PathStats* out = nullptr;
    paths = fbb.CreateUninitializedVectorOfStructs(summary.paths.size(), &out);
    for (const PathSummary& p : summary.paths) {
      *out++ = wire::PathStats(p.path, p.source_port, to_wire_count(p.sent), to_wire_count(p.received),
                               to_wire_count(p.lost), to_wire_ns(p.min_ns), std::llround(p.mean_ns),
                               to_wire_ns(p.max_ns));
    }
  }
  flatbuffers::Offset<flatbuffers::Vector<const wire::HistogramBucket*>> histogram;
  std::uint8_t scheme = 0;
  if (summary.rtt.count() != 0) {
    scheme = summary.rtt.scheme();
    histogram = sparse_buckets(fbb, summary.rtt);
  }
  // Protocols with a reflector clock say whether one-way delay was measured; absent (TCP, ICMP,
  // old agents) reads as NotMeasured.
  flatbuffers::Offset<wire::OneWay> one_way;
  if (has_dwell(summary.protocol)) one_way = build_one_way(fbb, summary.one_way);
  // The builder rather than CreateLatencySummary: thirty positional arguments of mostly the
  // same type would let a swapped pair compile. Wide fields first, as the generated Create
  // functions do, so the table needs no alignment padding.
  wire::LatencySummaryBuilder out(fbb);
  out.add_min_ns(to_wire_ns(summary.min_ns));
  out.add_max_ns(to_wire_ns(summary.max_ns));
  out.add_mean_ns(summary.mean_ns);
  out.add_stddev_ns(summary.stddev_ns);
  out.add_p50_ns(to_wire_ns(summary.p50_ns));
  out.add_p90_ns(to_wire_ns(summary.p90_ns));
  out.add_p99_ns(to_wire_ns(summary.p99_ns));
  out.add_p999_ns(to_wire_ns(summary.p999_ns));
  out.add_jitter_mean_ns(summary.jitter_mean_ns);
  out.add_jitter_p99_ns(to_wire_ns(summary.jitter_p99_ns));
  out.add_target(name);
  const auto add_counts = [&](bool appended) {
    for (const WireCount& c : kWireCounts) {
      if (c.appended == appended) (out.*c.add)(to_wire_count(summary.*c.count));
    }
  };
  add_counts(false);
  out.add_histogram(histogram);
  add_counts(true);
  out.add_histogram_overflow(to_wire_count(summary.rtt.overflow()));
  out.add_histogram_dropped(to_wire_count(summary.rtt.dropped()));
  out.add_protocol(to_wire(summary.protocol));
  out.add_timestamp_source(summary.timestamp_source == TimestampSource::kKernel
                               ? wire::TimestampSource::Kernel
                               : wire::TimestampSource::Userspace);
  out.add_histogram_scheme(scheme);
  if (unresolved) {
    out.add_unresolved(true);  // absent means resolved, as from an agent before late DNS
  }
  if (!paths.IsNull()) {
    out.add_paths(paths);  // absent with one path
  }
  if (!one_way.IsNull()) out.add_one_way(one_way);
  if (summary.stamp_ssid != 0) out.add_stamp_ssid(summary.stamp_ssid);
  return out.Finish();
}

}  // namespace vantage::agent::aggregate
