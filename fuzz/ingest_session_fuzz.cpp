// libFuzzer target: one agent connection's protocol (IngestSession, sans-IO) as a state machine.
// The input is decoded into a sequence of operations, as the TLS server and the store would
// drive a session: authenticate with some identity, feed frames (Hello, Batch, Ack built from
// input bytes, or raw bytes), store outcomes for seqs, write completions, clock advances, ticks,
// revocation and close. After each step it traps when the session breaks its contract:
// - every write is a verified Ack; the acks of batches go out in arrival order, one per batch,
//   each only once that batch and every earlier one have their outcome (Stored for stored and
//   duplicate, RetryLater for failed), and the ones due are all queued while the session is open;
// - a refusal (Rejected, or RetryLater for the session) leaves the session closing; once closing
//   no batch is accepted; once closed nothing is written and it stays closed;
// - an accepted batch is a verified Batch with a non-zero seq, of the certificate's agent, region
//   and PoP, with strings that pass the peer-text rules;
// - unwritten acks stay within max_unsent_ack_bytes; a tick past the deadline closes.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "collector/ingest_session.hpp"
#include "platform/log.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/peer_text.hpp"

namespace {

using namespace vantage;
using collector::IngestSession;
using collector::SessionBatch;
using collector::store::StoreOutcome;
using Bytes = std::vector<std::uint8_t>;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

class ManualClock final : public collector::SessionClock {
 public:
  std::int64_t monotonic_ns() const override { return monotonic; }
  std::int64_t realtime_ns() const override { return 1'800'000'000'000'000'000 + monotonic; }
  std::int64_t monotonic = 5'000'000'000;
};

class NullTally final : public collector::SessionTally {
 public:
  void count(collector::Reject) override {}
  void refuse_pre_auth(const std::string&, collector::Reject) override {}
  void count_frame() override {}
  void count_ack(bool) override {}
};

// Small limits, so the slow-reader bound and both timeouts are reachable in a few steps.
const collector::IngestConfig& session_config() {
  static const collector::IngestConfig config = [] {
    collector::IngestConfig c;
    c.regions = {"eu-west", "eu-central"};
    c.max_frame = 16 << 10;
    c.max_unsent_ack_bytes = 1024;
    c.handshake_timeout = std::chrono::milliseconds(1'000);
    c.idle_timeout = std::chrono::milliseconds(5'000);
    return c;
  }();
  return config;
}

// ---- Input decoding: every operation and its arguments are read here, and only here. ----
// fuzz/make_session_seeds.py writes the seed corpus in this encoding: change both together.

// The input, front to back; past its end every byte reads as 0.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const noexcept { return pos_ >= size_; }
  std::uint8_t u8() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint64_t le(int bytes) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= std::uint64_t{u8()} << (8 * i);
    return v;
  }
  std::string text(std::size_t n) {
    std::string out;
    while (n-- > 0 && !empty()) out.push_back(static_cast<char>(u8()));
    return out;
  }
  Bytes bytes(std::size_t n) {
    const std::string t = text(n);
    return Bytes(t.begin(), t.end());
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

enum class Op : std::uint8_t {
  kAuthenticate,     // the TLS handshake ended: flags (bit 0 resumed, bits 1-3 zero: server full), identity
  kHandshakeFailed,  //
  kHello,     // a Hello frame: agent, region, PoP, version, arch, flag (1: 16 incarnation bytes follow)
  kBatch,     // a Batch frame: agent, seq, flags (bit 0 region, bit 1 PoP, bits 2-3 targets), ...
  kAck,       // an Ack frame from the agent (never valid): seq
  kRawBytes,  // bytes as they come (length byte, at most 64): partial frames, garbage, prefixes
  kStored,    // the store's outcome: selector (bit 0: of an accepted batch, index byte), seq, outcome
  kWritten,   // the socket took the frame next_write() offered
  kAdvance,   // time passes: milliseconds, 2 bytes, at most 8000
  kTick,      // the timer fires
  kClose,     // the server ends the session (peer gone, shutdown)
  kRevoke,    // a reloaded CRL revokes the session's certificate
  kCount,
};

// A name that agrees with the others (one of `known`), or after them text from the input.
std::string pick(Input& in, std::initializer_list<const char*> known) {
  const std::size_t i = in.u8() % (known.size() + 1);
  return i < known.size() ? std::string(known.begin()[i]) : in.text(in.u8() % 81);
}

// Small seqs that collide (0 is invalid), or any 64-bit one.
std::uint64_t pick_seq(Input& in) {
  const std::uint8_t b = in.u8();
  return b < 0x80 ? b % 9 : in.le(8);
}

StoreOutcome pick_outcome(Input& in) {
  constexpr StoreOutcome kOutcomes[] = {StoreOutcome::kStored, StoreOutcome::kDuplicate,
                                        StoreOutcome::kFailed};
  return kOutcomes[in.u8() % 3];
}

platform::tls::PeerIdentity pick_identity(Input& in) {
  platform::tls::PeerIdentity identity;
  identity.agent_id = pick(in, {"agent-1", "agent-2", ""});
  identity.region = pick(in, {"eu-west", "eu-central", "us-east"});
  identity.pop = pick(in, {"fra1", "ams1"});
  identity.serial = "\x01\x02";
  // As identity_of() hands it over: a component it would not accept comes as an error instead.
  bool components_valid = true;
  for (const std::string* c : {&identity.agent_id, &identity.region, &identity.pop}) {
    components_valid = components_valid && (c->empty() || platform::tls::valid_identity_component(*c));
  }
  if (!components_valid || in.u8() % 8 == 7) identity.error = "no vantage:// URI in subjectAltName";
  return identity;
}

Bytes framed(flatbuffers::FlatBufferBuilder& fbb, wire::Message type, flatbuffers::Offset<void> message) {
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, type, message));
  Bytes out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

Bytes hello_frame(Input& in) {
  flatbuffers::FlatBufferBuilder fbb;
  const auto agent = fbb.CreateString(pick(in, {"agent-1", "agent-2"}));
  const auto region = fbb.CreateString(pick(in, {"eu-west", "eu-central", "us-east"}));
  const auto pop = fbb.CreateString(pick(in, {"fra1", "ams1"}));
  const auto version = fbb.CreateString(pick(in, {"0.1.0"}));
  const auto arch = fbb.CreateString(pick(in, {"arm64", "amd64"}));
  std::optional<wire::Incarnation> incarnation;
  if (in.u8() % 2 == 1) {
    std::array<std::uint8_t, 16> bytes{};
    for (auto& b : bytes) b = in.u8();
    incarnation.emplace(bytes);
  }
  const auto hello =
      wire::CreateHello(fbb, 1, agent, region, pop, version, arch, 0, incarnation ? &*incarnation : nullptr);
  return framed(fbb, wire::Message::Hello, hello.Union());
}

Bytes batch_frame(Input& in) {
  flatbuffers::FlatBufferBuilder fbb;
  const auto agent = fbb.CreateString(pick(in, {"agent-1", "agent-2"}));
  const std::uint64_t seq = pick_seq(in);
  const std::uint8_t flags = in.u8();
  const auto region = (flags & 1) != 0 ? fbb.CreateString(pick(in, {"eu-west", "eu-central"})) : 0;
  const auto pop = (flags & 2) != 0 ? fbb.CreateString(pick(in, {"fra1", "ams1"})) : 0;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency;
  for (int n = (flags >> 2) % 4; n > 0; --n) {
    latency.push_back(wire::CreateLatencySummary(fbb, fbb.CreateString(pick(in, {"10.0.0.1:7000", "fra1"}))));
  }
  const auto batch = wire::CreateBatch(fbb, agent, seq, 1'000, 2'000, region, pop, fbb.CreateVector(latency));
  return framed(fbb, wire::Message::Batch, batch.Union());
}

Bytes ack_frame(Input& in) {
  flatbuffers::FlatBufferBuilder fbb;
  const auto ack = wire::CreateAck(fbb, pick_seq(in), wire::AckStatus::Stored);
  return framed(fbb, wire::Message::Ack, ack.Union());
}

// ---- The session and what it has promised so far. ----

class Harness {
 public:
  Harness() : session_(session_config(), clock_, tally_, "192.0.2.7:40000", "192.0.2.7") {}

  void step(Input& in) {
    const auto op = static_cast<Op>(in.u8() % static_cast<int>(Op::kCount));
    const bool was_accepting = session_.reading();
    switch (op) {
      case Op::kAuthenticate: {
        const std::uint8_t flags = in.u8();
        session_.on_authenticated(pick_identity(in), (flags & 1) != 0, ((flags >> 1) & 7) != 0);
        break;
      }
      case Op::kHandshakeFailed:
        session_.on_handshake_failed("fuzz");
        break;
      case Op::kHello:
        feed(hello_frame(in));
        break;
      case Op::kBatch:
        feed(batch_frame(in));
        break;
      case Op::kAck:
        feed(ack_frame(in));
        break;
      case Op::kRawBytes:
        feed(in.bytes(in.u8() % 65));
        break;
      case Op::kStored: {
        const bool of_accepted = in.u8() % 2 == 1 && !accepted_.empty();
        const std::uint64_t seq = of_accepted ? accepted_[in.u8() % accepted_.size()].seq : pick_seq(in);
        stored(seq, pick_outcome(in));
        break;
      }
      case Op::kWritten:
        write_one();
        break;
      case Op::kAdvance:
        clock_.monotonic += static_cast<std::int64_t>(in.le(2) % 8'001) * 1'000'000;
        break;
      case Op::kTick: {
        const bool due = !session_.closed() && clock_.monotonic >= session_.deadline_ns();
        session_.on_tick();
        check(!due || session_.closed());
        break;
      }
      case Op::kClose:
        session_.close();
        break;
      case Op::kRevoke:
        session_.revoke();
        break;
      case Op::kCount:
        break;
    }
    take_batches(was_accepting);
    check_state();
  }

  // The peer reads everything; every batch whose outcome (and every earlier one's) is in must
  // have had its ack, unless the session closed before (slow reader, timeout, server close).
  void finish() {
    const bool open = !session_.closed();
    while (session_.next_write() != nullptr) write_one();
    if (open) check(outcome_acks_ == complete_prefix());
  }

 private:
  struct Accepted {
    std::uint64_t seq = 0;
    std::optional<StoreOutcome> outcome;
  };

  void feed(const Bytes& bytes) { session_.on_bytes(bytes); }

  void stored(std::uint64_t seq, StoreOutcome outcome) {
    // The contract: an outcome is for the oldest batch of that seq still without one.
    for (Accepted& a : accepted_) {
      if (a.seq == seq && !a.outcome) {
        a.outcome = outcome;
        break;
      }
    }
    session_.on_stored(seq, outcome);
  }

  void take_batches(bool was_accepting) {
    for (const SessionBatch& b : session_.take_batches()) {
      check(was_accepting && !closed_);
      check(b.seq != 0 && !b.agent_id.empty() && b.agent_id == session_.cn());
      // Residency is the certificate's: its region (one this collector serves) and PoP.
      const auto& regions = session_config().regions;
      check(b.region == session_.identity().region && b.pop == session_.identity().pop);
      check(std::find(regions.begin(), regions.end(), b.region) != regions.end());
      const wire::Frame* frame = wire::verify_frame(b.frame);
      check(frame != nullptr && frame->message_as_Batch() != nullptr);
      const wire::Batch& batch = *frame->message_as_Batch();
      check(batch.seq() == b.seq && batch.agent_id() != nullptr && batch.agent_id()->str() == b.agent_id);
      check(!wire::check_batch_text(batch));
      accepted_.push_back({b.seq, std::nullopt});
    }
  }

  // How many batches, from the first, have their outcome: exactly those may have been acked.
  std::size_t complete_prefix() const {
    std::size_t n = 0;
    while (n < accepted_.size() && accepted_[n].outcome) ++n;
    return n;
  }

  void write_one() {
    const Bytes* next = session_.next_write();
    if (next == nullptr) return;
    wire::FrameReader reader(session_config().max_frame);
    reader.feed(*next);
    check(reader.next() == wire::FrameStatus::kFrame);
    const wire::Ack* ack = reader.frame()->message_as_Ack();
    check(ack != nullptr && reader.buffered() == 0);
    if (ack->reason() != nullptr) {
      check(!wire::check_peer_text("Ack.reason", ack->reason()->string_view(), wire::PeerText::kAckReason));
    }
    const bool outcome = ack->status() == wire::AckStatus::Stored ||
                         (ack->status() == wire::AckStatus::RetryLater && ack->seq() != 0);
    if (outcome) {
      check(outcome_acks_ < complete_prefix());
      const Accepted& a = accepted_[outcome_acks_++];
      check(ack->seq() == a.seq);
      check((ack->status() == wire::AckStatus::RetryLater) == (*a.outcome == StoreOutcome::kFailed));
    } else {
      check(session_.closing());  // a refusal, then the session ends
    }
    session_.on_written();
  }

  void check_state() {
    if (closed_) check(session_.closed());
    closed_ = session_.closed();
    if (closed_) {
      check(session_.next_write() == nullptr && !session_.reading());
    } else {
      check(session_.unsent_bytes() <= session_config().max_unsent_ack_bytes);
      check((session_.next_write() == nullptr) == (session_.unsent_bytes() == 0));
    }
    check(session_.pending() == accepted_.size() - complete_prefix());
  }

  ManualClock clock_;
  NullTally tally_;
  IngestSession session_;
  std::vector<Accepted> accepted_;  // in arrival order
  std::size_t outcome_acks_ = 0;    // acks written for them, in order
  bool closed_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  platform::set_log_level(platform::LogLevel::kError);  // refusals are the normal case here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Harness harness;
  for (int steps = 0; steps < 256 && !in.empty(); ++steps) harness.step(in);
  harness.finish();
  return 0;
}
