#include "agent/ship/shipper_session.hpp"

#include <algorithm>
#include <utility>

#include "agent/process_usage.hpp"
#include "platform/log.hpp"
#include "schemas/peer_text.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::agent::ship {

namespace {

using platform::log;
using platform::LogLevel;

}  // namespace

ShipperSession::ShipperSession(ShipperConfig config, Spool spool, SessionIo& io, Now now, std::uint64_t seed)
    : config_(std::move(config)), spool_(std::move(spool)), io_(io), now_(std::move(now)), rng_(seed) {
  // A reload opens the spool again: records the last spool gave up (and counted) stay given up.
  spool_.adopt_bad_seqs(config_.self_baseline.spool_bad);
}

void ShipperSession::publish_spool_counters() {
  const SpoolStats stats = spool_.stats();
  SpoolBadSeqs bad = spool_.bad_seqs();
  update([&](ShipperCounters& c) {
    c.acked_seq = spool_.acked_seq();
    c.spool = stats;
    c.spool_bad = std::move(bad);
  });
}

void ShipperSession::start() {
  arm_flush();
  connect();
}

void ShipperSession::arm(SessionTimer timer, std::chrono::milliseconds after) {
  io_.arm_timer(timer, now_() + after);
}

void ShipperSession::connect() {
  if (stopping_) {
    return;
  }
  state_ = State::kConnecting;
  // A resolve failure is reported from inside connect(): then the backoff is armed already.
  io_.connect(collector());
  if (state_ == State::kConnecting) {
    arm(SessionTimer::kConnection, config_.connect_timeout);
  }
}

void ShipperSession::on_resolve_failed(std::string_view error) {
  fail("resolve " + collector().host + ": " + std::string(error));
}

void ShipperSession::on_collector_resolved() {
  if (state_ == State::kBackoff && !stopping_) {
    connect();
  }
}

void ShipperSession::on_connect_failed(std::string_view error) {
  update([](ShipperCounters& s) { ++s.connect_failures; });
  fail("connect to " + collector().host + ":" + std::to_string(collector().port) + ": " + std::string(error));
}

void ShipperSession::on_connected() {
  state_ = State::kHandshaking;
  arm(SessionTimer::kConnection, config_.handshake_timeout);
}

void ShipperSession::on_handshake_failed(std::string_view error) {
  update([](ShipperCounters& s) { ++s.tls_failures; });
  fail("TLS handshake with " + collector().host + ": " + std::string(error));
}

void ShipperSession::on_session(std::string_view tls_version, bool resumed) {
  io_.cancel_timer(SessionTimer::kConnection);
  update([resumed](ShipperCounters& s) {
    ++s.connects;
    s.connected = true;
    if (resumed) ++s.resumed;
  });
  // The incarnation is what the collector's log and store name this spool by.
  log(LogLevel::kInfo, "connected to collector %s:%u (%s%s), spool incarnation %s", collector().host.c_str(),
      static_cast<unsigned>(collector().port), std::string(tls_version).c_str(), resumed ? ", resumed" : "",
      to_hex(spool_.incarnation()).c_str());
  reader_ = wire::FrameReader(config_.max_frame);
  writes_.clear();
  writing_ = false;
  std::vector<std::uint8_t> hello;
  // The spool's incarnation names its seq space: after a purge seq 1 is a new batch, not a duplicate.
  wire::append_frame(hello, build_hello_frame(config_.identity, config_.capabilities, spool_.incarnation(),
                                              config_.reflectors, config_.target_list_version));
  writes_.push_back(std::move(hello));
  state_ = State::kReady;
  // Everything not acked goes again, in order: the collector dedupes what it already has.
  sent_through_ = spool_.acked_seq();
  write_next();
}

void ShipperSession::on_bytes(std::span<const std::uint8_t> bytes) {
  if (state_ != State::kReady) {
    return;
  }
  reader_.feed(bytes);
  // Every whole frame, until one ends the connection.
  for (wire::FrameStatus status;
       state_ == State::kReady && (status = reader_.next()) != wire::FrameStatus::kNeedMore;) {
    if (status == wire::FrameStatus::kFrame) {
      on_frame(*reader_.frame(), reader_.frame_bytes());
    } else {
      fail(std::string("bad frame from collector: ") + wire::to_string(status));
    }
  }
}

void ShipperSession::on_frame(const wire::Frame& frame, std::span<const std::uint8_t> bytes) {
  if (frame.message_type() == wire::Message::TargetList) {
    on_target_list(bytes);
    return;
  }
  const wire::Ack* ack = frame.message_as_Ack();
  if (ack == nullptr) {
    fail("collector sent something other than an Ack");
    return;
  }
  switch (ack->status()) {
    case wire::AckStatus::Stored:
      on_ack(*ack);
      break;
    case wire::AckStatus::Rejected: {
      update([](ShipperCounters& s) { ++s.rejected; });
      refused_ = true;
      // The collector's words are a peer's: escaped and bounded before any log line shows them.
      const std::string reason =
          ack->reason() != nullptr
              ? platform::escape_for_log(wire::str(ack->reason()), wire::max_bytes(wire::PeerText::kAckReason))
              : "no reason given";
      // Nothing is acked or deleted: a rejected batch stays spooled and goes again first after
      // every reconnect (with the growing backoff), so a collector that is fixed or upgraded takes
      // it; measuring and spooling go on meanwhile. The reason is logged once while it stays the
      // same; retries that meet it again log at debug level only.
      const bool repeated = reason == last_refusal_;
      last_refusal_ = reason;
      const std::string what = ack->seq() != 0 ? "rejected batch " + std::to_string(ack->seq()) +
                                                     " (kept in the spool, retried with backoff)"
                                               : "refused this agent";
      log(repeated ? LogLevel::kDebug : LogLevel::kError, "collector %s %s: %s", collector().host.c_str(),
          what.c_str(), reason.c_str());
      fail("refused: " + reason, repeated);
      check_drain();
      return;
    }
    case wire::AckStatus::RetryLater:
      update([](ShipperCounters& s) { ++s.retry_later; });
      fail("collector asked to retry later");
      return;
  }
}

void ShipperSession::on_target_list(std::span<const std::uint8_t> bytes) {
  // A bad list is the collector's bug, not the connection's: it is refused whole (the agent keeps
  // the list it runs), counted and logged, and the session goes on delivering batches.
  platform::Result<AcceptedTargetList> accepted =
      config_.on_target_list && (config_.capabilities & kCapabilityTargetList) != 0
          ? accept_target_list(bytes, config_.target_list_limits)
          : platform::Result<AcceptedTargetList>(platform::Status::error("this agent takes no target lists"));
  if (!accepted) {
    const std::string why = accepted.error();
    update([&why](ShipperCounters& s) {
      ++s.target_lists_refused;
      s.last_target_list_error = why;
    });
    // Repeats of one line are suppressed by the log's rate limit.
    log(LogLevel::kWarning, "collector %s: target list refused: %s", collector().host.c_str(), why.c_str());
    return;
  }
  update([](ShipperCounters& s) { ++s.target_lists_accepted; });
  log(LogLevel::kInfo, "collector %s: target list version %llu received (%zu targets)", collector().host.c_str(),
      static_cast<unsigned long long>(accepted.value().version), accepted.value().targets.size());
  config_.on_target_list(std::move(accepted).value());
}

void ShipperSession::on_ack(const wire::Ack& ack) {
  if (const platform::Status st = spool_.ack(ack.seq()); !st) {
    spool_failed(st);
  }
  failures_ = 0;  // the collector is working: the next outage starts from the shortest backoff
  refused_ = false;
  last_refusal_.clear();
  const SpoolStats stats = spool_.stats();
  update([&stats](ShipperCounters& s) {
    s.acked_seq = stats.acked_seq;
    s.spool = stats;
  });
  arm_ack_timer();
  pump();
  check_drain();
}

void ShipperSession::pump() {
  if (state_ != State::kReady || stopping_) {
    return;
  }
  while (writes_.size() < 2 && sent_through_ - spool_.acked_seq() < config_.max_in_flight) {
    std::optional<SpoolRecord> record = spool_.next_unacked(sent_through_);
    if (!record) {
      break;
    }
    // Never send a batch the disk might still lose: after a power cut its seq would be handed
    // out again, to a different batch, and the collector would drop that one as a duplicate.
    if (record->seq > spool_.durable_seq()) {
      // A flush that reports a sync still running may have applied an earlier one that has
      // returned since (a slow disk): what is durable now goes, the rest waits.
      if (const platform::Status st = spool_.flush(); !st) {
        spool_failed(st);
      } else {
        spool_synced();
      }
      if (record->seq > spool_.durable_seq()) break;
    }
    std::vector<std::uint8_t> frame;
    frame.reserve(wire::kFrameLengthSize + record->payload.size());
    wire::append_frame(
        frame, {reinterpret_cast<const std::uint8_t*>(record->payload.data()), record->payload.size()});
    writes_.push_back(std::move(frame));
    sent_through_ = record->seq;
  }
  if (!writing_ && !writes_.empty()) {
    write_next();
  }
  arm_ack_timer();
}

void ShipperSession::write_next() {
  if (state_ != State::kReady) {
    return;
  }
  if (writes_.empty()) {
    writing_ = false;
    return;
  }
  writing_ = true;
  io_.write(writes_.front());
}

void ShipperSession::on_write_done() {
  if (state_ != State::kReady || !writing_) {
    return;
  }
  writes_.pop_front();
  update([](ShipperCounters& s) { ++s.frames_sent; });
  writing_ = false;
  if (writes_.empty()) {
    pump();
  } else {
    write_next();
  }
}

void ShipperSession::on_write_failed(std::string_view error) { fail("write: " + std::string(error)); }

void ShipperSession::on_peer_closed() { fail("collector closed the connection"); }

void ShipperSession::on_read_failed(std::string_view error) { fail("read: " + std::string(error)); }

void ShipperSession::on_timer(SessionTimer timer) {
  switch (timer) {
    case SessionTimer::kConnection:
      switch (state_) {
        case State::kConnecting:
          on_connect_failed("timed out");
          return;
        case State::kHandshaking:
          on_handshake_failed("timed out");
          return;
        case State::kReady:
          // Unacked data outstanding this long without an ack: the collector is stuck.
          fail("no ack for " + std::to_string(config_.ack_timeout.count()) + " ms");
          return;
        case State::kBackoff:
          connect();
          return;
        case State::kIdle:
          return;
      }
      return;
    case SessionTimer::kFlush: {
      if (stopping_) {
        return;
      }
      const std::uint64_t durable = spool_.durable_seq();
      const bool was_stalled = sync_stalled_;
      if (const platform::Status st = spool_.flush(); !st) {
        spool_failed(st);
      } else {
        spool_synced();
      }
      // What waited for a sync can go now: one that returned (also a stalled one whose result
      // this flush collected, while the next sync it started is still running).
      if (spool_.durable_seq() > durable || (was_stalled && !sync_stalled_)) pump();
      arm_flush();
      return;
    }
    case SessionTimer::kDrain: {
      auto done = std::exchange(drained_, nullptr);
      if (done) done();
      return;
    }
  }
}

void ShipperSession::arm_ack_timer() {
  if (state_ != State::kReady) {
    return;
  }
  if (sent_through_ <= spool_.acked_seq()) {
    io_.cancel_timer(SessionTimer::kConnection);
    return;
  }
  arm(SessionTimer::kConnection, config_.ack_timeout);
}

void ShipperSession::arm_flush() {
  if (config_.spool.fsync != SpoolConfig::Fsync::kInterval) {
    return;
  }
  arm(SessionTimer::kFlush, config_.spool.fsync_interval);
}

void ShipperSession::fail(const std::string& why, bool quiet) {
  state_ = State::kIdle;
  writing_ = false;
  io_.close();  // before the writes go: no write of the old connection may still use them
  writes_.clear();
  io_.cancel_timer(SessionTimer::kConnection);
  update([&why](ShipperCounters& s) {
    s.connected = false;
    s.last_error = why;
  });
  if (stopping_) {
    return;
  }
  log(quiet ? LogLevel::kDebug : LogLevel::kWarning, "collector %s:%u: %s", collector().host.c_str(),
      static_cast<unsigned>(collector().port), why.c_str());
  ++failures_;
  // Fail over: the next collector of the region gets the next attempt.
  collector_index_ = (collector_index_ + 1) % config_.collectors.size();
  schedule_reconnect();
}

std::chrono::milliseconds ShipperSession::backoff_ceiling(std::uint32_t failures) const {
  const std::uint32_t exponent = std::min<std::uint32_t>(failures, 20);
  return std::chrono::milliseconds(std::min<std::chrono::milliseconds::rep>(
      config_.backoff_max.count(), config_.backoff_initial.count() << exponent));
}

void ShipperSession::schedule_reconnect() {
  // Full jitter: uniform in [0, ceiling], so agents cut off together do not come back together.
  const auto ceiling = backoff_ceiling(failures_).count();
  std::uniform_int_distribution<std::chrono::milliseconds::rep> pick(0, std::max<std::int64_t>(ceiling, 1));
  state_ = State::kBackoff;
  arm(SessionTimer::kConnection, std::chrono::milliseconds(pick(rng_)));
}

void ShipperSession::spool_failed(const platform::Status& st) {
  if (st.code() == platform::Errc::kUnavailable) {
    // An fsync still running (a hung or very slow disk): not an error yet, but visible, once per
    // stall; the spool counts it (sync_stalls) and the flush timer and the next batch retry.
    if (!sync_stalled_) {
      sync_stalled_ = true;
      log(LogLevel::kWarning, "spool: %s; batches are spooled but not sent until it returns",
          st.message().c_str());
    }
    publish_spool_counters();
    return;
  }
  log(LogLevel::kError, "spool: %s", st.message().c_str());
  update([](ShipperCounters& s) { ++s.spool_errors; });
  publish_spool_counters();
}

void ShipperSession::spool_synced() {
  if (sync_stalled_) {
    sync_stalled_ = false;
    log(LogLevel::kNotice, "spool: fsync returned again; sending resumes");
  }
}

bool ShipperSession::delivered() const { return spool_.acked_seq() + 1 >= spool_.next_seq(); }

void ShipperSession::drain(std::chrono::milliseconds limit, std::function<void()> done) {
  drained_ = std::move(done);
  if (limit.count() <= 0) {
    on_timer(SessionTimer::kDrain);
    return;
  }
  arm(SessionTimer::kDrain, limit);
  if (state_ == State::kBackoff && !refused_ && !delivered()) {
    connect();
  }
  check_drain();
}

void ShipperSession::check_drain() {
  if (drained_ && (refused_ || delivered())) {
    io_.cancel_timer(SessionTimer::kDrain);
    on_timer(SessionTimer::kDrain);
  }
}

void ShipperSession::shut_down() {
  stopping_ = true;
  io_.cancel_timer(SessionTimer::kFlush);
  if (const platform::Status st = spool_.flush(); !st) {
    spool_failed(st);
  }
  fail("agent stopping");
  // What pump() and the flush counted since the last publish (reads given up, retried errors):
  // the baseline a reload carries over is taken from here.
  publish_spool_counters();
}

void ShipperSession::submit(MeasurementReport& report, const std::vector<ProbeTargetSpec>& targets,
                            std::uint64_t target_list_version) {
  if (stopping_) {
    return;
  }
  const std::uint64_t seq = spool_.next_seq();
  const SpoolStats before = spool_.stats();
  BatchExtras extras;
  extras.spool_dropped = before.dropped_total;
  extras.self = self_metrics(report, before);
  extras.target_list_version = target_list_version;
  extras.clock = platform::ClockStateCell::instance().current();
  const std::span<const std::uint8_t> frame = batch_builder_.build(config_.identity, seq, report, targets, extras);
  if (const platform::Status st = spool_.append(seq, std::as_bytes(frame)); !st) {
    log(LogLevel::kError, "spool: batch %llu not stored: %s", static_cast<unsigned long long>(seq),
        st.message().c_str());
    const SpoolStats stats = spool_.stats();  // the spool counted the lost batch (append_failures)
    update([&stats](ShipperCounters& s) {
      ++s.spool_errors;
      s.spool = stats;
    });
    return;
  }
  const SpoolStats stats = spool_.stats();
  if (stats.full_disk_drops > before.full_disk_drops) {
    log(LogLevel::kWarning, "spool: disk full: dropped the %llu oldest batches to make room (%llu dropped in all)",
        static_cast<unsigned long long>(stats.full_disk_drops - before.full_disk_drops),
        static_cast<unsigned long long>(stats.dropped_total));
  }
  update([&stats](ShipperCounters& s) {
    ++s.batches_spooled;
    s.spool = stats;
  });
  pump();
}

SelfMetrics ShipperSession::self_metrics(const MeasurementReport& report, const SpoolStats& spool_stats) {
  const SelfBaseline& base = config_.self_baseline;
  const ProcessUsage usage = read_process_usage();
  SelfMetrics m;
  m.process_start_ns = process_start_ns();
  m.config_generation = base.config_generation;
  m.rss_bytes = usage.rss_bytes;
  m.cpu_user_ns = usage.cpu_user_ns;
  m.cpu_system_ns = usage.cpu_system_ns;
  const MeasurementCounters& c = report.counters;
  m.probe_ring_dropped = base.probe_ring_dropped + c.udp.events_dropped + c.tcp.ring_full + c.icmp.ring_full;
  m.load_ring_dropped = base.load_ring_dropped + c.loads_dropped;
  m.spool_records = spool_stats.records;
  m.spool_bytes = spool_stats.live_bytes;
  std::lock_guard lock(counters_mutex_);
  const std::uint64_t sessions = base.sessions + counters_.connects;
  m.reconnects = sessions > 0 ? sessions - 1 : 0;
  m.connect_failures = base.connect_failures + counters_.connect_failures;
  m.tls_failures = base.tls_failures + counters_.tls_failures;
  m.rejected = base.rejected + counters_.rejected;
  m.spool_errors = base.spool_errors + counters_.spool_errors + spool_stats.retried_errors;
  m.spool_lost = base.spool_lost + spool_stats.lost();
  m.spool_sync_stalls = base.spool_sync_stalls + spool_stats.sync_stalls;
  return m;
}

ShipperCounters ShipperSession::counters() const {
  std::lock_guard lock(counters_mutex_);
  return counters_;
}

}  // namespace vantage::agent::ship
