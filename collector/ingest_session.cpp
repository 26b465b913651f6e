#include "collector/ingest_session.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include "platform/clock.hpp"
#include "platform/log.hpp"
#include "schemas/peer_text.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector {

namespace {

using platform::log;
using platform::LogLevel;

class SystemSessionClock final : public SessionClock {
 public:
  std::int64_t monotonic_ns() const override { return platform::monotonic_ns(); }
  std::int64_t realtime_ns() const override { return platform::realtime_ns(); }
};

// Every peer-provided string goes into a log line through this: no raw newline or control byte.
std::string shown(std::string_view peer_text) { return platform::escape_for_log(peer_text); }

// A peer's value inside '...' in a refusal reason: escaped, with its own quotes as \x27, so a
// value cannot close the quotes and make the rest of the line read as the collector's words.
std::string quoted(std::string_view peer_text) {
  std::string out(1, '\'');
  for (char c : platform::escape_for_log(peer_text, 96)) {
    if (c == '\'') {
      out += "\\x27";
    } else {
      out.push_back(c);
    }
  }
  out += '\'';
  return out;
}

Reject reject_for(platform::TextFault fault) {
  switch (fault) {
    case platform::TextFault::kTooLong:
      return Reject::kStringTooLong;
    case platform::TextFault::kInvalidUtf8:
      return Reject::kInvalidUtf8;
    default:
      return Reject::kControlCharacter;
  }
}

std::int64_t to_ns(std::chrono::milliseconds d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

std::vector<std::uint8_t> ack_frame(std::uint64_t seq, wire::AckStatus status, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb(128);
  const auto ack = wire::CreateAckDirect(fbb, seq, status, reason.empty() ? nullptr : reason.c_str());
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Union()));
  std::vector<std::uint8_t> out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

}  // namespace

const SessionClock& system_session_clock() noexcept {
  static const SystemSessionClock clock;
  return clock;
}

IngestSession::IngestSession(const IngestConfig& config, const SessionClock& clock, SessionTally& tally,
                             std::string peer, std::string source)
    : config_(config),
      clock_(clock),
      tally_(tally),
      peer_(std::move(peer)),
      source_(std::move(source)),
      reader_(config.max_frame),
      deadline_ns_(clock.monotonic_ns() + to_ns(config.handshake_timeout)) {}

void IngestSession::on_handshake_failed(const std::string& why, Reject reason) {
  if (phase_ != Phase::kHandshake) return;
  log(LogLevel::kDebug, "%s: TLS handshake failed: %s", peer_.c_str(), why.c_str());
  tally_.refuse_pre_auth(source_, reason);
  close();
}

void IngestSession::on_authenticated(platform::tls::PeerIdentity peer, bool resumed, bool session_available) {
  if (phase_ != Phase::kHandshake) return;
  phase_ = Phase::kHello;
  identity_ = std::move(peer);
  cn_ = identity_.agent_id;
  resumed_ = resumed;
  if (!session_available) {
    log(LogLevel::kWarning, "%s (%s): session limit (%zu) reached, closing", peer_.c_str(), shown(cn_).c_str(),
        config_.max_sessions);
    tally_.count(Reject::kConnectionLimit);
    send_then_close(ack_frame(0, wire::AckStatus::RetryLater, "session limit reached"));
    return;
  }
  if (!identity_.error.empty()) {
    // The certificate is the CA's, but binds no usable identity (identity_.error is escaped).
    log(LogLevel::kWarning, "%s: refused: %s (serial %s)", peer_.c_str(), identity_.error.c_str(),
        identity_.serial_hex().c_str());
    tally_.count(Reject::kCertificate);
    send_then_close(ack_frame(0, wire::AckStatus::Rejected, identity_.error));
    return;
  }
  if (cn_.empty()) {
    log(LogLevel::kWarning, "%s: no client certificate identity, refusing", peer_.c_str());
    tally_.count(Reject::kNoIdentity);
    send_then_close(ack_frame(0, wire::AckStatus::Rejected, "no client certificate identity"));
    return;
  }
  restart_idle_deadline();
}

void IngestSession::revoke() {
  if (phase_ == Phase::kHandshake || phase_ == Phase::kClosing || closed()) return;
  refuse(Reject::kRevoked, "the certificate of agent '" + cn_ + "' (serial " + identity_.serial_hex() +
                               ") is revoked by the collector's CRL");
}

void IngestSession::expire() {
  if (phase_ == Phase::kHandshake || phase_ == Phase::kClosing || closed()) return;
  refuse(Reject::kCertificateExpired,
         "the certificate of agent '" + cn_ + "' (serial " + identity_.serial_hex() + ") has expired");
}

void IngestSession::on_tick() {
  if (closed() || clock_.monotonic_ns() < deadline_ns_) return;
  if (phase_ != Phase::kHandshake) {
    log(LogLevel::kNotice, "%s (%s): idle timeout, closing", peer_.c_str(), shown(cn_).c_str());
    tally_.count(Reject::kTimeout);
  } else {
    log(LogLevel::kDebug, "%s: handshake timeout, closing", peer_.c_str());
    tally_.refuse_pre_auth(source_, Reject::kTimeout);
  }
  close();
}

void IngestSession::restart_idle_deadline() { deadline_ns_ = clock_.monotonic_ns() + to_ns(config_.idle_timeout); }

void IngestSession::on_bytes(std::span<const std::uint8_t> bytes) {
  if (!reading()) return;
  reader_.feed(bytes);
  for (;;) {
    const wire::FrameStatus status = reader_.next();
    if (status == wire::FrameStatus::kNeedMore) {
      break;
    }
    if (status != wire::FrameStatus::kFrame) {
      log(LogLevel::kWarning, "%s (%s): %s, closing", peer_.c_str(), shown(cn_).c_str(), wire::to_string(status));
      tally_.count(Reject::kFrame);
      close();
      return;
    }
    tally_.count_frame();
    restart_idle_deadline();
    if (!on_frame(*reader_.frame(), reader_.frame_bytes())) {
      return;
    }
  }
  reader_.release_if_idle();
}

// False when the session is being closed.
bool IngestSession::on_frame(const wire::Frame& frame, std::span<const std::uint8_t> bytes) {
  if (const wire::Hello* hello = frame.message_as_Hello()) {
    if (phase_ == Phase::kOpen) {
      return refuse(Reject::kProtocol, "a second Hello");
    }
    // Nothing of a Hello is kept, compared or logged before its strings pass.
    if (const auto fault = wire::check_hello_text(*hello)) {
      return refuse(reject_for(fault->fault), fault->reason);
    }
    agent_id_ = wire::text(hello->agent_id());
    region_ = wire::text(hello->region());
    pop_ = wire::text(hello->pop());
    arch_ = wire::text(hello->arch());
    version_ = wire::text(hello->software_version());
    incarnation_ = store::incarnation_of(*hello);
    if (agent_id_ != cn_) {
      return refuse(Reject::kIdentity,
                    "Hello claims agent " + quoted(agent_id_) + " but the certificate is for " + quoted(cn_));
    }
    // Residency is the certificate's word, not the agent's.
    if (region_ != identity_.region) {
      return refuse(Reject::kRegionMismatch, "Hello claims region " + quoted(region_) + " but the certificate of " +
                                                 cn_ + " binds region " + quoted(identity_.region));
    }
    if (pop_ != identity_.pop) {
      return refuse(Reject::kPopMismatch, "Hello claims PoP " + quoted(pop_) + " but the certificate of " + cn_ +
                                              " binds PoP " + quoted(identity_.pop));
    }
    const auto& served = config_.regions;
    if (std::find(served.begin(), served.end(), region_) == served.end()) {
      std::string list;
      for (const std::string& r : served) list += (list.empty() ? "" : ", ") + r;
      return refuse(Reject::kRegion, "region '" + region_ + "' is not served here (serves: " + list + ")");
    }
    phase_ = Phase::kOpen;
    mesh_hello_ = mesh_hello_of(*hello);
    running_list_version_ = mesh_hello_->target_list_version;
    log(LogLevel::kInfo, "%s: agent %s (%s/%s, %s, %s, incarnation %s) connected%s", peer_.c_str(),
        shown(agent_id_).c_str(), shown(region_).c_str(), shown(pop_).c_str(), shown(arch_).c_str(),
        shown(version_).c_str(),
        store::incarnation_hex(incarnation_).c_str(), resumed_ ? ", resumed" : "");
    return true;
  }
  if (const wire::Batch* batch = frame.message_as_Batch()) {
    if (phase_ != Phase::kOpen) {
      return refuse(Reject::kProtocol, "a Batch before Hello");
    }
    // First, so no message below quotes a bad string. Refused with its seq, so the agent knows
    // which batch (it keeps it spooled). The connection closes: an ack for a later batch would
    // tell the agent to delete this one.
    if (const auto fault = wire::check_batch_text(*batch)) {
      return refuse(reject_for(fault->fault), "batch " + std::to_string(batch->seq()) + ": " + fault->reason,
                    batch->seq());
    }
    if (wire::str(batch->agent_id()) != agent_id_) {
      return refuse(Reject::kIdentity,
                    "a Batch for agent " + quoted(wire::text(batch->agent_id())) + " on " + agent_id_ + "'s connection");
    }
    if (batch->seq() == 0) {
      return refuse(Reject::kProtocol, "a Batch with seq 0");
    }
    // The stored frame carries its own region and PoP: they must be the certificate's too.
    if (batch->region() != nullptr && batch->region()->size() > 0 && wire::str(batch->region()) != identity_.region) {
      return refuse(Reject::kRegionMismatch, "batch " + std::to_string(batch->seq()) + " claims region " +
                                                 quoted(wire::text(batch->region())) + " but the certificate binds " +
                                                 quoted(identity_.region),
                    batch->seq());
    }
    if (batch->pop() != nullptr && batch->pop()->size() > 0 && wire::str(batch->pop()) != identity_.pop) {
      return refuse(Reject::kPopMismatch, "batch " + std::to_string(batch->seq()) + " claims PoP " +
                                              quoted(wire::text(batch->pop())) + " but the certificate binds " +
                                              quoted(identity_.pop),
                    batch->seq());
    }
    if (batch->self() != nullptr && batch->self()->target_list_version() != running_list_version_) {
      running_list_version_ = batch->self()->target_list_version();
      running_changed_ = running_list_version_;
    }
    SessionBatch item;
    item.frame.assign(bytes.begin(), bytes.end());
    item.agent_id = agent_id_;
    item.region = identity_.region;  // the certificate's (the Hello's agreed)
    item.pop = identity_.pop;
    item.arch = arch_;
    item.software_version = version_;
    item.received_ns = clock_.realtime_ns();
    item.seq = batch->seq();
    item.incarnation = incarnation_;
    awaiting_.push_back({item.seq, std::nullopt});
    batches_.push_back(std::move(item));
    return true;
  }
  return refuse(Reject::kProtocol, "an unexpected message");
}

bool IngestSession::refuse(Reject reason, const std::string& why, std::uint64_t seq) {
  log(LogLevel::kWarning, "%s (%s): refused: %s", peer_.c_str(), shown(cn_).c_str(), shown(why).c_str());
  tally_.count(reason);
  send_then_close(ack_frame(seq, wire::AckStatus::Rejected, why));
  return false;
}

std::vector<SessionBatch> IngestSession::take_batches() { return std::exchange(batches_, {}); }

void IngestSession::on_stored(std::uint64_t seq, store::StoreOutcome outcome) {
  // The store answers a connection's batches in the order they were queued; should it ever
  // answer a later one first, that ack waits for the earlier ones.
  const auto entry = std::find_if(awaiting_.begin(), awaiting_.end(),
                                  [seq](const Awaiting& a) { return a.seq == seq && !a.outcome; });
  if (entry == awaiting_.end()) return;  // not one of ours
  entry->outcome = outcome;
  while (!awaiting_.empty() && awaiting_.front().outcome) {
    const Awaiting done = awaiting_.front();
    awaiting_.pop_front();
    ack(done.seq, *done.outcome);
  }
}

void IngestSession::ack(std::uint64_t seq, store::StoreOutcome outcome) {
  if (closed()) {
    return;
  }
  if (outcome == store::StoreOutcome::kFailed) {
    // The agent keeps the batch in its spool and resends after reconnecting.
    send_then_close(ack_frame(seq, wire::AckStatus::RetryLater, "store unavailable"));
    return;
  }
  tally_.count_ack(outcome == store::StoreOutcome::kDuplicate);
  send(ack_frame(seq, wire::AckStatus::Stored, {}));
}

void IngestSession::send(std::vector<std::uint8_t> frame) {
  unsent_bytes_ += frame.size();
  if (unsent_bytes_ > config_.max_unsent_ack_bytes) {
    // A peer that sends batches but never reads its acks would grow this queue without end.
    log(LogLevel::kWarning, "%s (%s): %zu bytes of acks unread, closing", peer_.c_str(), shown(cn_).c_str(),
        unsent_bytes_);
    tally_.count(Reject::kSlowReader);
    close();
    return;
  }
  writes_.push_back({std::move(frame), false});
}

bool IngestSession::send_target_list(std::vector<std::uint8_t> frame) {
  if (phase_ != Phase::kOpen) return false;
  // The front may be on the wire already; any later list has not been started.
  for (std::size_t i = 1; i < writes_.size(); ++i) {
    if (!writes_[i].target_list) continue;
    unsent_list_bytes_ = unsent_list_bytes_ - writes_[i].bytes.size() + frame.size();
    writes_[i].bytes = std::move(frame);
    return true;
  }
  unsent_list_bytes_ += frame.size();
  writes_.push_back({std::move(frame), true});
  return false;
}

void IngestSession::send_then_close(std::vector<std::uint8_t> frame) {
  phase_ = Phase::kClosing;
  send(std::move(frame));
}

void IngestSession::on_written() {
  if (writes_.empty()) return;
  (writes_.front().target_list ? unsent_list_bytes_ : unsent_bytes_) -= writes_.front().bytes.size();
  writes_.pop_front();
  if (writes_.empty() && closing()) {
    close();
    answered_ = true;
  }
}

}  // namespace vantage::collector
