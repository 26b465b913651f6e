// The ingest connection's protocol without sockets, TLS or real time: an IngestSession fed real
// FlatBuffers frames and store outcomes, with a clock the test moves. Hello checks, frame errors,
// the order of acks, the slow reader and the two timeouts.
#include <doctest/doctest.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "collector/ingest_session.hpp"
#include "schemas/frame_codec.hpp"

namespace vantage::collector {
namespace {

using store::StoreOutcome;
using Bytes = std::vector<std::uint8_t>;

class ManualClock final : public SessionClock {
 public:
  std::int64_t monotonic_ns() const override { return monotonic; }
  std::int64_t realtime_ns() const override { return realtime; }
  void advance(std::chrono::nanoseconds d) {
    monotonic += d.count();
    realtime += d.count();
  }
  std::int64_t monotonic = 5'000'000'000;
  std::int64_t realtime = 1'800'000'000'000'000'000;
};

class Tally final : public SessionTally {
 public:
  void count(Reject reason) override { ++counters.rejects[static_cast<std::size_t>(reason)]; }
  void refuse_pre_auth(const std::string& source, Reject reason) override {
    count(reason);
    pre_auth_sources.push_back(source);
  }
  void count_frame() override { ++counters.frames; }
  void count_ack(bool duplicate) override {
    ++(duplicate ? counters.batches_duplicate : counters.batches_stored);
    ++counters.acks_sent;
  }
  std::uint64_t rejects(Reject reason) const { return counters.rejects[static_cast<std::size_t>(reason)]; }
  std::uint64_t all_rejects() const {
    std::uint64_t n = 0;
    for (const std::uint64_t r : counters.rejects) n += r;
    return n;
  }

  IngestCounters counters;
  std::vector<std::string> pre_auth_sources;
};

Bytes framed(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<wire::Frame> frame) {
  wire::FinishFrameBuffer(fbb, frame);
  Bytes out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

Bytes hello(const char* agent_id = "agent-1", const char* region = "eu-west", std::uint16_t version = 1,
            const char* pop = "fra1") {
  flatbuffers::FlatBufferBuilder fbb;
  const auto h = wire::CreateHelloDirect(fbb, version, agent_id, region, pop, "0.1.0", "aarch64", 0);
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::Hello, h.Union()));
}

Bytes batch(std::uint64_t seq, const char* agent_id = "agent-1", const char* region = "eu-west",
            const char* pop = "fra1") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency{wire::CreateLatencySummaryDirect(fbb, "10.0.0.1:7000")};
  const auto b = wire::CreateBatchDirect(fbb, agent_id, seq, 1'000, 2'000, region, pop, &latency);
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::Batch, b.Union()));
}

// A frame whose union says `type` around a Hello table.
Bytes frame_of_type(wire::Message type) {
  flatbuffers::FlatBufferBuilder fbb;
  const auto h = wire::CreateHelloDirect(fbb, 1, "agent-1", "eu-west");
  wire::FrameBuilder frame(fbb);
  frame.add_message_type(type);
  frame.add_message(h.Union());
  return framed(fbb, frame.Finish());
}

Bytes ack_from_agent() {
  flatbuffers::FlatBufferBuilder fbb;
  const auto a = wire::CreateAck(fbb, 1, wire::AckStatus::Stored);
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::Ack, a.Union()));
}

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct SentAck {
  std::uint64_t seq = 0;
  wire::AckStatus status = wire::AckStatus::Stored;
  std::string reason;
};

// What a certificate names: vantage://<region>/<pop>/<agent_id> (agent_id empty: nothing).
platform::tls::PeerIdentity certificate(const char* agent_id = "agent-1", const char* region = "eu-west",
                                        const char* pop = "fra1") {
  platform::tls::PeerIdentity id;
  if (*agent_id != '\0') {
    id.agent_id = agent_id;
    id.region = region;
    id.pop = pop;
  }
  id.serial = "\x0a\xbc";
  id.not_after_s = 1'900'000'000;
  return id;
}

// One agent connection: a session on a test clock and tally, authenticated as `cn`.
struct Peer {
  explicit Peer(const IngestConfig& config, ManualClock& clock, Tally& tally, const char* cn = "agent-1")
      : session(config, clock, tally, "192.0.2.7:40000", "192.0.2.7") {
    if (cn != nullptr) session.on_authenticated(certificate(cn), false, true);
  }
  void feed(const Bytes& bytes) { session.on_bytes(bytes); }
  std::vector<std::uint64_t> stored_seqs() {
    std::vector<std::uint64_t> seqs;
    for (const SessionBatch& b : session.take_batches()) seqs.push_back(b.seq);
    return seqs;
  }
  // Writes everything the session queued, as a peer that reads would take it.
  std::vector<SentAck> drain() {
    std::vector<SentAck> acks;
    while (const Bytes* next = session.next_write()) {
      wire::FrameReader reader;
      reader.feed(*next);
      REQUIRE(reader.next() == wire::FrameStatus::kFrame);
      const wire::Ack* ack = reader.frame()->message_as_Ack();
      REQUIRE(ack != nullptr);
      acks.push_back({ack->seq(), ack->status(), ack->reason() ? ack->reason()->str() : ""});
      session.on_written();
    }
    return acks;
  }
  std::vector<std::uint64_t> stored_acks() {
    std::vector<std::uint64_t> seqs;
    for (const SentAck& a : drain()) {
      CHECK(a.status == wire::AckStatus::Stored);
      seqs.push_back(a.seq);
    }
    return seqs;
  }

  IngestSession session;
};

struct Fixture {
  Fixture() { config.regions = {"eu-west", "eu-central"}; }
  IngestConfig config;
  ManualClock clock;
  Tally tally;
};

using Seqs = std::vector<std::uint64_t>;

// The session stays open until `wait` from now has passed, to the nanosecond, and closes then.
void check_closes_after(IngestSession& session, ManualClock& clock, std::chrono::nanoseconds wait) {
  clock.advance(wait - std::chrono::nanoseconds(1));
  session.on_tick();
  CHECK_FALSE(session.closed());
  clock.advance(std::chrono::nanoseconds(1));
  session.on_tick();
  CHECK(session.closed());
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "ingest session: a Hello matching the certificate and a served region opens it") {
  Peer peer(config, clock, tally);
  CHECK(peer.session.reading());
  peer.feed(hello() + batch(1) + batch(2));
  CHECK(tally.counters.frames == 3);
  CHECK(tally.all_rejects() == 0);
  const std::vector<SessionBatch> batches = peer.session.take_batches();
  REQUIRE(batches.size() == 2);
  CHECK(batches[0].seq == 1);
  CHECK(batches[1].seq == 2);
  // Labelled with the identity the connection proved, stamped with the session's wall clock.
  CHECK(batches[0].agent_id == "agent-1");
  CHECK(batches[0].region == "eu-west");
  CHECK(batches[0].pop == "fra1");
  CHECK(batches[0].arch == "aarch64");
  CHECK(batches[0].software_version == "0.1.0");
  CHECK(batches[0].received_ns == clock.realtime);
  // The frame is the verified FlatBuffer without its length prefix.
  const wire::Frame* frame = wire::verify_frame(batches[1].frame);
  REQUIRE(frame != nullptr);
  REQUIRE(frame->message_as_Batch() != nullptr);
  CHECK(frame->message_as_Batch()->seq() == 2);
  CHECK(peer.session.pending() == 2);
  CHECK(peer.session.next_write() == nullptr);  // nothing is acked before the store answers
  CHECK(peer.session.take_batches().empty());
}

TEST_CASE_FIXTURE(Fixture, "ingest session: the Hello's protocol version is not checked") {
  // No version check exists (a newer agent's Hello reads fine: fields are only appended); this
  // pins that, so adding one is a visible decision.
  Peer peer(config, clock, tally);
  peer.feed(hello("agent-1", "eu-west", 2) + batch(1));
  CHECK(peer.stored_seqs() == Seqs{1});
  CHECK(tally.all_rejects() == 0);
  CHECK(peer.session.reading());
}

TEST_CASE_FIXTURE(Fixture, "ingest session: each refusal answers with its reason, counts it and closes") {
  using wire::AckStatus;
  struct Case {
    const char* name;
    Bytes bytes;  // after the TLS handshake
    Reject reason;
    std::string text;
    Seqs stored;  // batches accepted before the refusal still go to the store
    platform::tls::PeerIdentity who = certificate();
    bool session_available = true;
    AckStatus status = AckStatus::Rejected;
  };
  platform::tls::PeerIdentity no_uri = certificate("");
  no_uri.error = "the certificate has no vantage://<region>/<pop>/<agent-id> URI in its subjectAltName";
  const std::vector<Case> cases{
      {"agent id disagreeing with the certificate", hello("agent-2"), Reject::kIdentity,
       "Hello claims agent 'agent-2' but the certificate is for 'agent-1'", {}},
      {"region not served (the certificate's own)", hello("agent-1", "ap-south"), Reject::kRegion,
       "region 'ap-south' is not served here (serves: eu-west, eu-central)", {}, certificate("agent-1", "ap-south")},
      {"a served region the certificate does not bind", hello("agent-1", "eu-central"), Reject::kRegionMismatch,
       "Hello claims region 'eu-central' but the certificate of agent-1 binds region 'eu-west'", {}},
      {"a region the certificate binds, claimed from another", hello("agent-1", "eu-west"), Reject::kRegionMismatch,
       "Hello claims region 'eu-west' but the certificate of agent-1 binds region 'ap-south'", {},
       certificate("agent-1", "ap-south")},
      {"a PoP the certificate does not bind", hello("agent-1", "eu-west", 1, "ams1"), Reject::kPopMismatch,
       "Hello claims PoP 'ams1' but the certificate of agent-1 binds PoP 'fra1'", {}},
      // A quote in the peer's value cannot close the quotes: the reader still sees whose word is whose.
      {"a PoP with a quote in it", hello("agent-1", "eu-west", 1, "x' but the certificate binds PoP 'x"),
       Reject::kPopMismatch,
       "Hello claims PoP 'x\\x27 but the certificate binds PoP \\x27x' but the certificate of agent-1 binds PoP 'fra1'",
       {}},
      {"a certificate without an identity URI", hello(), Reject::kCertificate, no_uri.error, {}, no_uri},
      {"a Batch before Hello", batch(1), Reject::kProtocol, "a Batch before Hello", {}},
      {"a second Hello", hello() + batch(1) + hello(), Reject::kProtocol, "a second Hello", {1}},
      {"a Batch for another agent", hello() + batch(1, "agent-2"), Reject::kIdentity,
       "a Batch for agent 'agent-2' on agent-1's connection", {}},
      {"a Batch with seq 0", hello() + batch(0), Reject::kProtocol, "a Batch with seq 0", {}},
      {"an Ack from the agent", hello() + ack_from_agent(), Reject::kProtocol, "an unexpected message", {}},
      {"an unknown union type", hello() + frame_of_type(static_cast<wire::Message>(9)), Reject::kProtocol,
       "an unexpected message", {}},
      {"a frame with no message", frame_of_type(wire::Message::NONE), Reject::kProtocol, "an unexpected message",
       {}},
      {"no certificate identity", {}, Reject::kNoIdentity, "no client certificate identity", {}, certificate("")},
      {"the session limit", {}, Reject::kConnectionLimit, "session limit reached", {}, certificate(), false,
       AckStatus::RetryLater},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Tally own;
    Peer peer(config, clock, own, nullptr);
    peer.session.on_authenticated(c.who, false, c.session_available);
    peer.feed(c.bytes);
    CHECK(own.rejects(c.reason) == 1);
    CHECK(own.all_rejects() == 1);
    CHECK(own.pre_auth_sources.empty());
    CHECK(peer.stored_seqs() == c.stored);
    CHECK_FALSE(peer.session.reading());
    CHECK(peer.session.closing());
    CHECK_FALSE(peer.session.closed());  // not before the peer has its answer
    // Nothing more is read: a valid batch after the refusal goes nowhere.
    peer.feed(batch(7));
    CHECK(peer.stored_seqs().empty());
    const std::vector<SentAck> acks = peer.drain();
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].seq == 0);
    CHECK(acks[0].status == c.status);
    CHECK(acks[0].reason == c.text);
    CHECK(peer.session.closed());
  }
}

// A Hello or Batch with any bytes in its strings (std::string keeps NULs and invalid UTF-8).
Bytes hello_with(const std::string& agent_id, const std::string& region, const std::string& pop,
                 const std::string& version = "0.1.0", const std::string& arch = "aarch64") {
  flatbuffers::FlatBufferBuilder fbb;
  const auto h = wire::CreateHello(fbb, 1, fbb.CreateString(agent_id), fbb.CreateString(region),
                                   fbb.CreateString(pop), fbb.CreateString(version), fbb.CreateString(arch));
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::Hello, h.Union()));
}

Bytes batch_with_target(std::uint64_t seq, const std::string& target, const std::string& interface = "eth0") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::LatencySummary>> latency{
      wire::CreateLatencySummary(fbb, fbb.CreateString("10.0.0.1:7000")),
      wire::CreateLatencySummary(fbb, fbb.CreateString(target))};
  std::vector<flatbuffers::Offset<wire::NetInterface>> net{wire::CreateNetInterface(fbb, fbb.CreateString(interface))};
  std::vector<flatbuffers::Offset<wire::LoadSample>> load{
      wire::CreateLoadSample(fbb, 1, fbb.CreateString("arm64"), 0, nullptr, nullptr, nullptr, fbb.CreateVector(net))};
  const auto b = wire::CreateBatch(fbb, fbb.CreateString("agent-1"), seq, 1'000, 2'000, fbb.CreateString("eu-west"),
                                   fbb.CreateString("fra1"), fbb.CreateVector(latency), fbb.CreateVector(load));
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::Batch, b.Union()));
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a Hello with a hostile string is refused by rule before anything is compared") {
  struct Case {
    const char* name;
    Bytes bytes;
    Reject reason;
    std::string text;
  };
  const std::vector<Case> cases{
      {"a newline in the agent id", hello_with("agent-1\n<3>forged", "eu-west", "fra1"), Reject::kControlCharacter,
       "Hello.agent_id \"agent-1\\n<3>forged\": control character U+000A at byte 7"},
      {"invalid UTF-8 in the region", hello_with("agent-1", "eu-west\xff", "fra1"), Reject::kInvalidUtf8,
       "Hello.region \"eu-west\\xFF\": invalid UTF-8 at byte 7"},
      {"an overlong slash in the PoP", hello_with("agent-1", "eu-west", "fra\xc0\xaf"), Reject::kInvalidUtf8,
       "Hello.pop \"fra\\xC0\\xAF\": invalid UTF-8 at byte 3"},
      {"a C1 control in the version", hello_with("agent-1", "eu-west", "fra1", "1.0\xc2\x9b"),
       Reject::kControlCharacter, "Hello.software_version \"1.0\\xC2\\x9B\": control character U+009B at byte 3"},
      {"an arch past its bound", hello_with("agent-1", "eu-west", "fra1", "0.1.0", std::string(33, 'x')),
       Reject::kStringTooLong, "Hello.arch \"" + std::string(33, 'x') + "\": 33 bytes, over the limit of 32"},
      // The region is not served either: the string rule answers first, so no message quotes it raw.
      {"a NUL in a region not served", hello_with("agent-1", std::string("ap\0south", 8), "fra1"),
       Reject::kControlCharacter, "Hello.region \"ap\\x00south\": control character U+0000 at byte 2"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Tally own;
    Peer peer(config, clock, own);
    peer.feed(c.bytes + batch(1));
    CHECK(own.rejects(c.reason) == 1);
    CHECK(own.all_rejects() == 1);
    CHECK(peer.stored_seqs().empty());
    CHECK(peer.session.closing());
    const std::vector<SentAck> acks = peer.drain();
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].seq == 0);
    CHECK(acks[0].status == wire::AckStatus::Rejected);
    CHECK(acks[0].reason == c.text);
    CHECK(peer.session.closed());
  }
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a Batch with a hostile string is refused with its seq, earlier ones still stored") {
  struct Case {
    const char* name;
    Bytes bytes;
    Reject reason;
    std::string text;
  };
  const std::vector<Case> cases{
      {"a newline in a target", batch_with_target(3, "evil\nline"), Reject::kControlCharacter,
       "batch 3: Batch.latency[1].target \"evil\\nline\": control character U+000A at byte 4"},
      {"a lone surrogate in a target", batch_with_target(3, "x\xed\xb0\x80"), Reject::kInvalidUtf8,
       "batch 3: Batch.latency[1].target \"x\\xED\\xB0\\x80\": invalid UTF-8 at byte 1"},
      {"a target past its bound", batch_with_target(3, std::string(129, 't')), Reject::kStringTooLong,
       "batch 3: Batch.latency[1].target \"" + std::string(40, 't') + "...\": 129 bytes, over the limit of 128"},
      {"an escape sequence in an interface name", batch_with_target(3, "ok", "eth\x1b[2J"),
       Reject::kControlCharacter,
       "batch 3: Batch.load[0].net[0].name \"eth\\x1B[2J\": control character U+001B at byte 3"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Tally own;
    Peer peer(config, clock, own);
    peer.feed(hello() + batch(1) + batch(2) + c.bytes + batch(4));
    CHECK(own.rejects(c.reason) == 1);
    CHECK(own.all_rejects() == 1);
    // 1 and 2 go to the store; 3 and everything after it do not.
    CHECK(peer.stored_seqs() == Seqs{1, 2});
    CHECK_FALSE(peer.session.reading());
    const std::vector<SentAck> acks = peer.drain();
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].seq == 3);
    CHECK(acks[0].status == wire::AckStatus::Rejected);
    CHECK(acks[0].reason == c.text);
    CHECK(peer.session.closed());
  }
  // Hostile but valid names pass: quotes, markup, bidi marks, 4-byte UTF-8.
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch_with_target(1, "\"q\" </script><b>x</b>") +
            batch_with_target(2, "\xe2\x80\x8f\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xe2\x80\xae" "abc") +
            batch_with_target(3, "\xf0\x9f\x9a\x80 rocket"));
  CHECK(peer.stored_seqs() == Seqs{1, 2, 3});
  CHECK(tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a Batch claiming another region or PoP than the certificate is refused with its seq") {
  struct Case {
    Bytes bytes;
    Reject reason;
    std::uint64_t seq;
    std::string text;
    Seqs stored;
  };
  const std::vector<Case> cases{
      {hello() + batch(1) + batch(2, "agent-1", "eu-central"), Reject::kRegionMismatch, 2,
       "batch 2 claims region 'eu-central' but the certificate binds 'eu-west'", {1}},
      {hello() + batch(1, "agent-1", "eu-west", "ams1"), Reject::kPopMismatch, 1,
       "batch 1 claims PoP 'ams1' but the certificate binds 'fra1'", {}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    Tally own;
    Peer peer(config, clock, own);
    peer.feed(c.bytes);
    CHECK(own.rejects(c.reason) == 1);
    CHECK(own.all_rejects() == 1);
    CHECK(peer.stored_seqs() == c.stored);
    CHECK(peer.session.closing());
    const std::vector<SentAck> acks = peer.drain();
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].seq == c.seq);
    CHECK(acks[0].status == wire::AckStatus::Rejected);
    CHECK(acks[0].reason == c.text);
  }
}

TEST_CASE_FIXTURE(Fixture, "ingest session: batches are labelled with the certificate's region and PoP") {
  // A Batch without region or PoP of its own is stored under the certificate's.
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1, "agent-1", "", ""));
  const std::vector<SessionBatch> batches = peer.session.take_batches();
  REQUIRE(batches.size() == 1);
  CHECK(batches[0].region == "eu-west");
  CHECK(batches[0].pop == "fra1");
  CHECK(tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: batches carry the Hello's spool incarnation, legacy when it has none") {
  // A reinstalled agent's seq 1 under a new incarnation is a new batch: the key travels with it.
  const std::array<std::uint8_t, 16> bytes{0xa1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0x16};
  flatbuffers::FlatBufferBuilder fbb;
  const wire::Incarnation incarnation(flatbuffers::span<const std::uint8_t, 16>(bytes.data(), 16));
  const auto h = wire::CreateHelloDirect(fbb, 1, "agent-1", "eu-west", "fra1", "0.1.0", "aarch64", 0, &incarnation);
  Peer peer(config, clock, tally);
  peer.feed(framed(fbb, wire::CreateFrame(fbb, wire::Message::Hello, h.Union())) + batch(1) + batch(2));
  const std::vector<SessionBatch> batches = peer.session.take_batches();
  REQUIRE(batches.size() == 2);
  CHECK(batches[0].incarnation == bytes);
  CHECK(batches[1].incarnation == bytes);

  Peer legacy(config, clock, tally);
  legacy.feed(hello() + batch(1));
  const std::vector<SessionBatch> old = legacy.session.take_batches();
  REQUIRE(old.size() == 1);
  CHECK(old[0].incarnation == store::kLegacyIncarnation);
  CHECK(tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a session whose certificate is revoked is refused and closed") {
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1));
  CHECK(peer.stored_seqs() == Seqs{1});
  peer.session.revoke();
  CHECK(tally.rejects(Reject::kRevoked) == 1);
  CHECK_FALSE(peer.session.reading());
  peer.feed(batch(2));
  CHECK(peer.stored_seqs().empty());
  const std::vector<SentAck> acks = peer.drain();
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].status == wire::AckStatus::Rejected);
  CHECK(acks[0].reason == "the certificate of agent 'agent-1' (serial 0abc) is revoked by the collector's CRL");
  CHECK(peer.session.closed());
  peer.session.revoke();  // once closed, nothing more
  CHECK(tally.rejects(Reject::kRevoked) == 1);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a session whose certificate expired is refused and closed") {
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1));
  CHECK(peer.stored_seqs() == Seqs{1});
  peer.session.expire();
  CHECK(tally.rejects(Reject::kCertificateExpired) == 1);
  CHECK_FALSE(peer.session.reading());
  const std::vector<SentAck> acks = peer.drain();
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].status == wire::AckStatus::Rejected);
  CHECK(acks[0].reason == "the certificate of agent 'agent-1' (serial 0abc) has expired");
  CHECK(peer.session.closed());
  peer.session.expire();  // once closed, nothing more
  CHECK(tally.rejects(Reject::kCertificateExpired) == 1);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a failed TLS handshake is a pre-authentication refusal of its source") {
  Peer peer(config, clock, tally, nullptr);
  CHECK_FALSE(peer.session.reading());
  peer.session.on_handshake_failed("no certificate");
  CHECK(peer.session.closed());
  CHECK(peer.session.next_write() == nullptr);  // no answer before authentication
  CHECK(tally.rejects(Reject::kHandshake) == 1);
  CHECK(tally.all_rejects() == 1);
  CHECK(tally.pre_auth_sources == std::vector<std::string>{"192.0.2.7"});
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a bad frame closes that connection only, at once, as a frame error") {
  config.max_frame = 4096;
  Bytes too_long{0x01, 0x10, 0x00, 0x00};  // announces 4097 bytes
  Bytes empty{0x00, 0x00, 0x00, 0x00};
  // The root offset points far outside the buffer; the length and the identifier are right.
  Bytes unverifiable = batch(3);
  unverifiable[4] = 0x00;
  unverifiable[5] = 0xff;
  unverifiable[6] = 0xff;
  unverifiable[7] = 0x7f;
  // A FlatBuffer cut short with a length prefix that matches the cut.
  Bytes cut = batch(3);
  cut.resize(cut.size() - 24);
  const auto n = static_cast<std::uint32_t>(cut.size() - wire::kFrameLengthSize);
  cut[0] = static_cast<std::uint8_t>(n);
  cut[1] = static_cast<std::uint8_t>(n >> 8);
  const std::vector<std::pair<const char*, Bytes>> cases{
      {"length over the limit", too_long},
      {"zero length", empty},
      {"fails the verifier", unverifiable},
      {"a FlatBuffer cut short", cut},
  };
  for (const auto& [name, bad] : cases) {
    CAPTURE(name);
    Tally shared;
    Peer other(config, clock, shared);
    Peer peer(config, clock, shared);
    other.feed(hello() + batch(1));
    peer.feed(hello() + batch(1) + batch(2) + bad + batch(4));
    CHECK(shared.rejects(Reject::kFrame) == 1);
    CHECK(shared.all_rejects() == 1);
    CHECK(peer.session.closed());  // no answer: the stream cannot be trusted further
    CHECK(peer.session.next_write() == nullptr);
    CHECK(peer.stored_seqs() == Seqs{1, 2});  // what came before the bad frame
    // The other connection on the same server goes on.
    CHECK_FALSE(other.session.closed());
    other.feed(batch(2));
    CHECK(other.stored_seqs() == Seqs{1, 2});
    other.session.on_stored(1, StoreOutcome::kStored);
    CHECK(other.stored_acks() == Seqs{1});
  }
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a frame cut short on the wire waits for the rest, then the idle timeout") {
  Peer peer(config, clock, tally);
  const Bytes bytes = hello() + batch(1);
  // Byte by byte, the frames come out whole.
  for (std::size_t i = 0; i + 1 < bytes.size(); ++i) peer.feed({bytes[i]});
  CHECK(tally.counters.frames == 1);
  CHECK(peer.stored_seqs().empty());
  peer.feed({bytes.back()});
  CHECK(peer.stored_seqs() == Seqs{1});

  // A batch whose last bytes never come: nothing happens until the connection has been idle for
  // idle_timeout since its last whole frame.
  const Bytes truncated = batch(2);
  peer.feed(Bytes(truncated.begin(), truncated.end() - 10));
  check_closes_after(peer.session, clock, config.idle_timeout);
  CHECK(tally.rejects(Reject::kTimeout) == 1);
  CHECK(tally.rejects(Reject::kFrame) == 0);
  CHECK(tally.pre_auth_sources.empty());  // an authenticated peer is not a pre-auth refusal
  CHECK(peer.stored_seqs().empty());
}

TEST_CASE_FIXTURE(Fixture, "ingest session: acks go out in arrival order whatever the outcomes' grouping") {
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1) + batch(2) + batch(3) + batch(4) + batch(5));
  CHECK(peer.stored_seqs() == Seqs{1, 2, 3, 4, 5});

  SUBCASE("two commits: 1-2, then 3-5") {
    peer.session.on_stored(1, StoreOutcome::kStored);
    peer.session.on_stored(2, StoreOutcome::kStored);
    CHECK(peer.stored_acks() == Seqs{1, 2});
    peer.session.on_stored(3, StoreOutcome::kStored);
    peer.session.on_stored(4, StoreOutcome::kStored);
    peer.session.on_stored(5, StoreOutcome::kStored);
    CHECK(peer.stored_acks() == Seqs{3, 4, 5});
  }
  SUBCASE("later batches answered first wait for the earlier ones") {
    peer.session.on_stored(5, StoreOutcome::kStored);
    peer.session.on_stored(3, StoreOutcome::kStored);
    peer.session.on_stored(4, StoreOutcome::kStored);
    CHECK(peer.session.next_write() == nullptr);
    CHECK(peer.session.pending() == 5);
    peer.session.on_stored(2, StoreOutcome::kStored);
    CHECK(peer.session.next_write() == nullptr);
    peer.session.on_stored(1, StoreOutcome::kStored);
    CHECK(peer.stored_acks() == Seqs{1, 2, 3, 4, 5});
  }
  SUBCASE("one outcome at a time, each written before the next") {
    for (std::uint64_t seq = 1; seq <= 5; ++seq) {
      peer.session.on_stored(seq, StoreOutcome::kStored);
      CHECK(peer.stored_acks() == Seqs{seq});
    }
  }
  CHECK(peer.session.pending() == 0);
  CHECK(tally.counters.batches_stored == 5);
  CHECK(tally.counters.acks_sent == 5);
  // An outcome for no batch of this connection's is ignored.
  peer.session.on_stored(9, StoreOutcome::kStored);
  CHECK(peer.session.next_write() == nullptr);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: duplicates are acked as stored, a failed batch as RetryLater") {
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1) + batch(2) + batch(3) + batch(4));
  peer.session.on_stored(1, StoreOutcome::kDuplicate);
  peer.session.on_stored(2, StoreOutcome::kStored);
  peer.session.on_stored(3, StoreOutcome::kFailed);
  CHECK(peer.session.closing());
  CHECK_FALSE(peer.session.reading());
  // An outcome that arrives before the RetryLater is written is still acked.
  peer.session.on_stored(4, StoreOutcome::kStored);
  const std::vector<SentAck> acks = peer.drain();
  REQUIRE(acks.size() == 4);
  CHECK(acks[0].seq == 1);
  CHECK(acks[0].status == wire::AckStatus::Stored);
  CHECK(acks[1].seq == 2);
  CHECK(acks[1].status == wire::AckStatus::Stored);
  CHECK(acks[2].seq == 3);
  CHECK(acks[2].status == wire::AckStatus::RetryLater);
  CHECK(acks[2].reason == "store unavailable");
  CHECK(acks[3].seq == 4);
  CHECK(peer.session.closed());
  CHECK(tally.counters.batches_duplicate == 1);
  CHECK(tally.counters.batches_stored == 2);
  CHECK(tally.counters.acks_sent == 3);  // the RetryLater is not an ack of a stored batch
  // The store counts failed batches itself (Reject::kStore); the session counts no refusal.
  CHECK(tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: reading pauses at max_pending_per_connection") {
  config.max_pending_per_connection = 3;
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1) + batch(2));
  CHECK_FALSE(peer.session.at_pending_limit());
  peer.feed(batch(3));
  CHECK(peer.session.at_pending_limit());
  // An outcome behind an unanswered earlier batch frees nothing yet.
  peer.session.on_stored(2, StoreOutcome::kStored);
  CHECK(peer.session.at_pending_limit());
  peer.session.on_stored(1, StoreOutcome::kStored);
  CHECK_FALSE(peer.session.at_pending_limit());
  CHECK(peer.session.pending() == 1);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: a peer whose unread acks pass max_unsent_ack_bytes is closed") {
  Bytes bytes = hello();
  for (std::uint64_t seq = 1; seq <= 100; ++seq) bytes = bytes + batch(seq);
  // Every Stored ack has one size: the bound is set to exactly 30 of them.
  std::size_t ack_size = 0;
  {
    Tally scratch;
    Peer probe(config, clock, scratch);
    probe.feed(bytes);
    probe.session.on_stored(1, StoreOutcome::kStored);
    ack_size = probe.session.unsent_bytes();
  }
  REQUIRE(ack_size > 0);
  config.max_unsent_ack_bytes = 30 * ack_size;

  // The first ack is being written and is never taken: each later one queues behind it.
  Peer peer(config, clock, tally);
  peer.feed(bytes);
  REQUIRE(peer.stored_seqs().size() == 100);
  std::uint64_t seq = 0;
  while (!peer.session.closed() && seq < 100) peer.session.on_stored(++seq, StoreOutcome::kStored);
  // At the bound it stays open; the ack that would pass it closes the connection instead.
  CHECK(seq == 31);
  CHECK(peer.session.closed());
  CHECK(peer.session.next_write() == nullptr);
  CHECK(tally.rejects(Reject::kSlowReader) == 1);
  CHECK(tally.all_rejects() == 1);

  // A peer that reads takes 100 acks through the same bound.
  Tally other_tally;
  Peer reader(config, clock, other_tally);
  reader.feed(bytes);
  for (std::uint64_t s = 1; s <= 100; ++s) {
    reader.session.on_stored(s, StoreOutcome::kStored);
    CHECK(reader.stored_acks() == Seqs{s});
  }
  CHECK_FALSE(reader.session.closed());
  CHECK(other_tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: the handshake timeout counts from the start, the idle timeout from the last frame") {
  SUBCASE("a handshake that never ends is a pre-authentication timeout") {
    Peer peer(config, clock, tally, nullptr);
    check_closes_after(peer.session, clock, config.handshake_timeout);
    CHECK(tally.pre_auth_sources == std::vector<std::string>{"192.0.2.7"});
  }
  SUBCASE("every whole frame restarts the idle timeout") {
    clock.advance(std::chrono::seconds(3));  // the handshake took a while
    Peer peer(config, clock, tally);
    CHECK(peer.session.deadline_ns() == clock.monotonic + std::chrono::nanoseconds(config.idle_timeout).count());
    for (std::uint64_t seq = 1; seq <= 3; ++seq) {
      clock.advance(config.idle_timeout - std::chrono::milliseconds(1));
      peer.session.on_tick();
      CHECK_FALSE(peer.session.closed());
      peer.feed(seq == 1 ? hello() : batch(seq));
    }
    clock.advance(config.idle_timeout);
    peer.session.on_tick();
    CHECK(peer.session.closed());
    CHECK(tally.pre_auth_sources.empty());
  }
  CHECK(tally.rejects(Reject::kTimeout) == 1);
  CHECK(tally.all_rejects() == 1);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: once closed from outside it answers nothing") {
  Peer peer(config, clock, tally);
  peer.feed(hello() + batch(1));
  CHECK(peer.stored_seqs() == Seqs{1});
  peer.session.close();
  peer.session.on_stored(1, StoreOutcome::kStored);
  peer.feed(batch(2));
  clock.advance(config.idle_timeout * 2);
  peer.session.on_tick();
  CHECK(peer.session.next_write() == nullptr);
  CHECK(peer.stored_seqs().empty());
  CHECK(tally.counters.acks_sent == 0);
  CHECK(tally.all_rejects() == 0);
}

namespace {

// A TargetList frame of `version` with `targets` entries.
Bytes target_list(std::uint64_t version, int targets) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::MeshTarget>> list;
  for (int i = 0; i < targets; ++i) {
    list.push_back(wire::CreateMeshTargetDirect(fbb, ("192.0.2." + std::to_string(i)).c_str(), 7000));
  }
  const auto t = wire::CreateTargetListDirect(fbb, version, &list);
  return framed(fbb, wire::CreateFrame(fbb, wire::Message::TargetList, t.Union()));
}

// The version of a written TargetList frame, 0 for any other frame.
std::uint64_t list_version_of(const Bytes& frame) {
  wire::FrameReader reader;
  reader.feed(frame);
  REQUIRE(reader.next() == wire::FrameStatus::kFrame);
  const wire::TargetList* list = reader.frame()->message_as_TargetList();
  return list != nullptr ? list->version() : 0;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "ingest session: an unsent target list is replaced by a newer one, acks keep their order and bound") {
  Peer peer(config, clock, tally);
  // Before the Hello nothing is sent.
  CHECK_FALSE(peer.session.send_target_list(target_list(1, 3)));
  CHECK(peer.session.next_write() == nullptr);
  peer.feed(hello() + batch(1) + batch(2));
  REQUIRE(peer.stored_seqs() == Seqs{1, 2});

  // The first list goes out at once (it is the front: being written); the next ones queue once,
  // each replacing the unsent one, whatever their size.
  CHECK_FALSE(peer.session.send_target_list(target_list(10, 3)));
  peer.session.on_stored(1, StoreOutcome::kStored);
  CHECK_FALSE(peer.session.send_target_list(target_list(11, 3)));
  CHECK(peer.session.send_target_list(target_list(12, 200)));
  CHECK(peer.session.send_target_list(target_list(13, 5)));
  peer.session.on_stored(2, StoreOutcome::kStored);
  CHECK(peer.session.unsent_list_bytes() == target_list(10, 3).size() + target_list(13, 5).size());
  // Lists are not acks: they never count toward the slow-reader bound.
  CHECK(peer.session.unsent_bytes() < target_list(13, 5).size());

  std::vector<std::uint64_t> order;  // list versions, 0 for an ack
  while (const Bytes* next = peer.session.next_write()) {
    order.push_back(list_version_of(*next));
    peer.session.on_written();
  }
  CHECK(order == std::vector<std::uint64_t>{10, 0, 13, 0});
  CHECK(peer.session.unsent_list_bytes() == 0);
  CHECK(peer.session.unsent_bytes() == 0);
  CHECK_FALSE(peer.session.closed());
  CHECK(tally.all_rejects() == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingest session: the Hello's reflectors and list version, then the running version when batches change it") {
  Peer peer(config, clock, tally);
  flatbuffers::FlatBufferBuilder fbb;
  const auto bytes = asio::ip::make_address_v6("::ffff:192.0.2.9").to_bytes();
  std::vector<wire::ReflectorAddress> reflectors{
      wire::ReflectorAddress(flatbuffers::span<const std::uint8_t, 16>(bytes.data(), 16), 7000)};
  const auto h = wire::CreateHelloDirect(fbb, 1, "agent-1", "eu-west", "fra1", "0.1.0", "aarch64",
                                         wire::kCapabilityTargetList, nullptr, &reflectors, 7);
  peer.feed(framed(fbb, wire::CreateFrame(fbb, wire::Message::Hello, h.Union())));
  const std::optional<MeshHello> mesh_hello = peer.session.take_mesh_hello();
  REQUIRE(mesh_hello);
  CHECK(mesh_hello->accepts_lists);
  CHECK(mesh_hello->target_list_version == 7);
  REQUIRE(mesh_hello->reflectors.size() == 1);
  CHECK(mesh_hello->reflectors[0] == asio::ip::udp::endpoint(asio::ip::make_address("192.0.2.9"), 7000));
  CHECK_FALSE(peer.session.take_mesh_hello());

  const auto batch_running = [](std::uint64_t seq, std::uint64_t version) {
    flatbuffers::FlatBufferBuilder b;
    wire::AgentSelfBuilder self(b);
    self.add_target_list_version(version);
    const auto s = self.Finish();
    const auto batch = wire::CreateBatchDirect(b, "agent-1", seq, 1'000, 2'000, "eu-west", "fra1", nullptr, nullptr,
                                               nullptr, 0, s);
    return framed(b, wire::CreateFrame(b, wire::Message::Batch, batch.Union()));
  };
  peer.feed(batch_running(1, 7));  // what the Hello said: no change
  CHECK_FALSE(peer.session.take_running_list_version());
  peer.feed(batch_running(2, 9) + batch_running(3, 9));
  CHECK(peer.session.take_running_list_version() == std::optional<std::uint64_t>(9));
  CHECK_FALSE(peer.session.take_running_list_version());
  peer.feed(batch(4));  // no AgentSelf: says nothing about the list
  CHECK_FALSE(peer.session.take_running_list_version());
}

}  // namespace vantage::collector
