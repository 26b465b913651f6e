// The shipper's protocol state machine (agent/ship/shipper_session.hpp) driven without a socket
// or a real wait: a fake clock, an in-memory transport, and an in-memory collector that answers
// as collector/ingest_server.cpp does (Hello checks, Ack{seq, Stored} per batch, duplicates acked
// as stored, RetryLater and Rejected with the collector's reasons). The spool is the real one, in
// a temporary directory (on tmpfs where there is one).
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/ship/shipper_session.hpp"
#include "agent/version.hpp"
#include "platform/arch.hpp"
#include "schemas/frame_codec.hpp"
#include "spool_test_util.hpp"
#include "vantage/telemetry_generated.h"

namespace ship = vantage::agent::ship;
namespace wire = vantage::wire;
using namespace std::chrono_literals;
using ship::SessionTimer;
using TimePoint = ship::SessionClock::time_point;
using std::chrono::milliseconds;

namespace {

// An Ack as the collector writes it: length-prefixed, the reason left out when there is none.
std::vector<std::uint8_t> ack_frame(std::uint64_t seq, wire::AckStatus status,
                                    const std::string& reason = {}) {
  flatbuffers::FlatBufferBuilder fbb;
  const flatbuffers::Offset<flatbuffers::String> why = reason.empty() ? 0 : fbb.CreateString(reason);
  wire::AckBuilder ack(fbb);
  ack.add_seq(seq);
  ack.add_status(status);
  if (!why.IsNull()) ack.add_reason(why);
  wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Finish().Union()));
  std::vector<std::uint8_t> out;
  wire::append_frame(out, {fbb.GetBufferPointer(), fbb.GetSize()});
  return out;
}

struct HelloSeen {
  std::uint16_t protocol_version = 0;
  std::string agent_id, region, pop, software_version, arch;
  std::uint64_t capabilities = 0;
};

// One connection's worth of the collector: reads the agent's frames, checks them as the ingest
// server does, and queues its answers. Which batches are stored (acked) is the test's to say.
class FakeCollector {
 public:
  std::string certificate_cn = "fra1-edge-07";  // the agent certificate's CN
  std::vector<std::string> regions{"eu-central"};

  void reset_connection() {
    reader_ = wire::FrameReader();
    hello_.reset();
    closed = false;
    frames.clear();
  }

  // A whole frame as the agent wrote it (length prefix included).
  void receive(std::span<const std::uint8_t> bytes) {
    REQUIRE_FALSE(closed);
    reader_.feed(bytes);
    REQUIRE(reader_.next() == wire::FrameStatus::kFrame);  // one write is one frame
    const wire::Frame& frame = *reader_.frame();
    frames.push_back(frame.message_type());
    if (const wire::Hello* hello = frame.message_as_Hello()) {
      if (hello_) return refuse("a second Hello");
      HelloSeen h;
      h.protocol_version = hello->protocol_version();
      h.agent_id = str(hello->agent_id());
      h.region = str(hello->region());
      h.pop = str(hello->pop());
      h.software_version = str(hello->software_version());
      h.arch = str(hello->arch());
      h.capabilities = hello->capabilities();
      if (h.agent_id != certificate_cn) {
        return refuse("Hello claims agent '" + h.agent_id + "' but the certificate is for '" +
                      certificate_cn + "'");
      }
      if (std::find(regions.begin(), regions.end(), h.region) == regions.end()) {
        std::string list;
        for (const std::string& r : regions) list += (list.empty() ? "" : ", ") + r;
        return refuse("region '" + h.region + "' is not served here (serves: " + list + ")");
      }
      hello_ = h;
      hellos.push_back(h);
      return;
    }
    if (const wire::Batch* batch = frame.message_as_Batch()) {
      if (!hello_) return refuse("a Batch before Hello");
      if (str(batch->agent_id()) != hello_->agent_id) {
        return refuse("a Batch for agent '" + str(batch->agent_id()) + "' on " + hello_->agent_id +
                      "'s connection");
      }
      if (batch->seq() == 0) return refuse("a Batch with seq 0");
      received.push_back(batch->seq());
      if (batch->self() != nullptr) {
        last_reconnects = batch->self()->reconnects();
        last_rejected = batch->self()->rejected();
      }
      return;
    }
    refuse("an unexpected message");
  }

  // The store committed seq (or already held it: a duplicate is acked as stored).
  std::vector<std::uint8_t> store(std::uint64_t seq) {
    stored.insert(seq);
    return ack_frame(seq, wire::AckStatus::Stored);
  }

  std::vector<std::uint8_t> answers;    // what the collector has written and the agent not yet read
  bool closed = false;                  // the collector closed after a refusal
  std::vector<wire::Message> frames;    // this connection's frames, in order
  std::vector<HelloSeen> hellos;        // every accepted Hello, across connections
  std::vector<std::uint64_t> received;  // every Batch seq, across connections, in order
  std::set<std::uint64_t> stored;
  std::uint64_t last_reconnects = 0;  // Batch.self of the latest batch
  std::uint64_t last_rejected = 0;

 private:
  static std::string str(const flatbuffers::String* s) { return s == nullptr ? std::string() : s->str(); }
  void refuse(const std::string& why) {
    const auto frame = ack_frame(0, wire::AckStatus::Rejected, why);
    answers.insert(answers.end(), frame.begin(), frame.end());
    closed = true;
  }

  wire::FrameReader reader_;
  std::optional<HelloSeen> hello_;
};

// The in-memory transport and timers: records what the session asks for.
class FakeIo final : public ship::SessionIo {
 public:
  std::function<void()> on_connect;  // e.g. report a resolve failure from inside connect()
  std::vector<ship::CollectorAddress> connects;
  std::optional<std::vector<std::uint8_t>> write_pending;
  int closes = 0;
  std::array<std::optional<TimePoint>, ship::kSessionTimers> timers;

  void connect(const ship::CollectorAddress& collector) override {
    connects.push_back(collector);
    if (on_connect) on_connect();
  }
  void write(std::span<const std::uint8_t> bytes) override {
    REQUIRE_FALSE(write_pending.has_value());  // one write at a time
    write_pending.emplace(bytes.begin(), bytes.end());
  }
  void close() override {
    ++closes;
    write_pending.reset();
  }
  void arm_timer(SessionTimer timer, TimePoint at) override { timers[static_cast<std::size_t>(timer)] = at; }
  void cancel_timer(SessionTimer timer) override { timers[static_cast<std::size_t>(timer)].reset(); }

  std::optional<TimePoint> timer(SessionTimer t) const { return timers[static_cast<std::size_t>(t)]; }
};

ship::ShipperConfig base_config(const std::filesystem::path& dir) {
  ship::ShipperConfig c;
  c.identity = {"fra1-edge-07", "eu-central", "fra1"};
  c.collectors = {{"collector-a", 7443, ""}, {"collector-b", 7444, ""}};
  c.capabilities = ship::kCapabilityUdpEcho | ship::kCapabilityIcmp | ship::kCapabilityReflector;
  c.spool.dir = dir;
  c.spool.sync_wait = std::chrono::seconds(30);  // a slow fsync on a loaded machine is not a hung one here
  return c;
}

// One session, its fake world and the helpers that move it along.
struct Harness {
  explicit Harness(const std::function<void(ship::ShipperConfig&)>& tweak = {}, std::uint64_t seed = 7) {
    config = base_config(dir.path());
    if (tweak) tweak(config);
    std::vector<std::string> warnings;
    auto opened = ship::Spool::open(config.spool, warnings);
    REQUIRE(opened.has_value());
    session = std::make_unique<ship::ShipperSession>(
        config, std::move(opened).value(), io, [this] { return now; }, seed);
    session->publish_spool_counters();
  }

  void submit(int n = 1) {
    for (int i = 0; i < n; ++i) {
      vantage::agent::MeasurementReport r;
      r.wall_start_ns = 1'700'000'000'000'000'000;
      r.wall_end_ns = r.wall_start_ns + 1'000'000'000;
      session->submit(r, {});
    }
  }

  // TCP and TLS come up for the attempt the session has made.
  void connect(bool resumed = false) {
    REQUIRE_FALSE(io.connects.empty());
    collector.reset_connection();
    session->on_connected();
    session->on_session("TLSv1.3", resumed);
  }

  // The outstanding write reaches the collector; false when there was none.
  bool deliver_one() {
    if (!io.write_pending) return false;
    const std::vector<std::uint8_t> bytes = std::move(*io.write_pending);
    io.write_pending.reset();
    collector.receive(bytes);
    session->on_write_done();
    return true;
  }
  void deliver_all() {
    while (deliver_one()) {
    }
  }

  // The agent reads what the collector wrote.
  void read_answers() {
    const std::vector<std::uint8_t> bytes = std::move(collector.answers);
    collector.answers.clear();
    if (!bytes.empty()) session->on_bytes(bytes);
  }
  void ack(std::uint64_t seq) { session->on_bytes(collector.store(seq)); }
  void answer(std::uint64_t seq, wire::AckStatus status, const std::string& reason) {
    session->on_bytes(ack_frame(seq, status, reason));
  }

  // Moves the fake clock, firing each timer that comes due at its own time, in order.
  void advance(milliseconds by) {
    const TimePoint until = now + by;
    for (;;) {
      std::optional<std::size_t> next;
      for (std::size_t i = 0; i < io.timers.size(); ++i) {
        if (io.timers[i] && *io.timers[i] <= until && (!next || *io.timers[i] < *io.timers[*next])) next = i;
      }
      if (!next) break;
      now = *io.timers[*next];
      io.timers[*next].reset();
      session->on_timer(static_cast<SessionTimer>(*next));
    }
    now = until;
  }

  // How far off the reconnect timer is; fails when none is armed.
  milliseconds backoff_delay() const {
    const auto at = io.timer(SessionTimer::kConnection);
    REQUIRE(at.has_value());
    return std::chrono::duration_cast<milliseconds>(*at - now);
  }
  // Waits out the backoff exactly: nothing a millisecond early, a connect attempt on time.
  void wait_out_backoff() {
    const milliseconds delay = backoff_delay();
    const std::size_t attempts = io.connects.size();
    if (delay > 0ms) {
      advance(delay - 1ms);
      REQUIRE(io.connects.size() == attempts);
    }
    advance(delay > 0ms ? 1ms : 0ms);
    REQUIRE(io.connects.size() == attempts + 1);
  }

  ship::ShipperCounters counters() const { return session->counters(); }
  const ship::Spool& spool() const { return session->spool(); }

  spool_test::TempDir dir{"/dev/shm"};  // fsyncs cost nothing there: each case runs in milliseconds
  ship::ShipperConfig config;
  TimePoint now{std::chrono::hours(1000)};
  FakeIo io;
  FakeCollector collector;
  std::unique_ptr<ship::ShipperSession> session;
};

const std::vector<std::string> kRefusals = {
    "no client certificate identity",
    "Hello claims agent 'fra1-edge-07' but the certificate is for 'ams1-edge-01'",
    "region 'eu-central' is not served here (serves: us-east)",
    "a second Hello",
    "a Batch before Hello",
    "a Batch for agent 'x' on fra1-edge-07's connection",
    "a Batch with seq 0",
    "an unexpected message",
};

}  // namespace

TEST_CASE("session: Hello is the first frame on every connection and carries the agent's identity") {
  Harness h;
  h.submit(2);  // spooled before any connection
  h.session->start();
  REQUIRE(h.io.connects.size() == 1);
  CHECK(h.io.connects[0].host == "collector-a");
  CHECK_FALSE(h.io.write_pending.has_value());  // nothing goes before the handshake
  CHECK(h.io.timer(SessionTimer::kConnection) == h.now + h.config.connect_timeout);
  h.session->on_connected();
  CHECK(h.io.timer(SessionTimer::kConnection) == h.now + h.config.handshake_timeout);
  h.collector.reset_connection();
  h.session->on_session("TLSv1.3", true);
  h.deliver_one();
  REQUIRE(h.collector.frames == std::vector<wire::Message>{wire::Message::Hello});
  REQUIRE(h.collector.hellos.size() == 1);
  const HelloSeen& hello = h.collector.hellos[0];
  CHECK(hello.protocol_version == 1);
  CHECK(hello.agent_id == "fra1-edge-07");
  CHECK(hello.region == "eu-central");
  CHECK(hello.pop == "fra1");
  CHECK(hello.software_version == vantage::agent::kVersion);
  CHECK(hello.arch == vantage::platform::kArchName);
  CHECK(hello.capabilities ==
        (ship::kCapabilityUdpEcho | ship::kCapabilityIcmp | ship::kCapabilityReflector));
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2});
  ship::ShipperCounters c = h.counters();
  CHECK(c.connects == 1);
  CHECK(c.resumed == 1);
  CHECK(c.connected);
  CHECK(c.frames_sent == 3);

  // The next connection starts with Hello again, and resends what is not acked after it.
  h.session->on_peer_closed();
  h.wait_out_backoff();
  CHECK(h.io.connects.back().host == "collector-b");  // failover
  h.connect();
  h.deliver_all();
  CHECK(h.collector.frames ==
        std::vector<wire::Message>{wire::Message::Hello, wire::Message::Batch, wire::Message::Batch});
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 1, 2});
  CHECK(h.collector.hellos.size() == 2);
}

TEST_CASE("session: the window bounds the batches in flight and opens as acks arrive") {
  Harness h([](ship::ShipperConfig& c) { c.max_in_flight = 3; });
  h.session->start();
  h.connect();
  h.submit(6);
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3});
  CHECK_FALSE(h.io.write_pending.has_value());
  h.submit();  // a new batch waits for room too
  CHECK_FALSE(h.io.write_pending.has_value());
  h.ack(1);
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4});
  h.ack(3);  // acks are cumulative: 2 and 3 are held, two places open
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6});
  h.ack(6);
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6, 7});
  h.ack(7);
  CHECK(h.spool().stats().records == 0);
  CHECK_FALSE(h.io.timer(SessionTimer::kConnection).has_value());  // nothing outstanding, no ack timer
}

TEST_CASE(
    "session: an ack frees the spool through its seq; stale, duplicate and unknown acks change nothing "
    "else") {
  Harness h;
  h.session->start();
  h.connect();
  h.submit(4);
  h.deliver_all();
  REQUIRE(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4});

  h.ack(1);
  ship::SpoolStats s = h.spool().stats();
  CHECK(s.acked_seq == 1);
  CHECK(s.records == 3);
  CHECK(s.oldest_seq == 2);
  CHECK(h.counters().acked_seq == 1);
  CHECK(h.counters().spool.records == 3);

  // Byte by byte, as a slow reader might hand it over.
  const std::vector<std::uint8_t> ack2 = h.collector.store(2);
  for (std::uint8_t b : ack2) h.session->on_bytes({&b, 1});
  CHECK(h.spool().acked_seq() == 2);
  CHECK(h.spool().stats().oldest_seq == 3);

  h.ack(2);  // duplicate
  h.ack(1);  // out of order: below what is acked
  s = h.spool().stats();
  CHECK(s.acked_seq == 2);
  CHECK(s.records == 2);
  CHECK(h.counters().connected);
  CHECK(h.io.closes == 0);
  CHECK_FALSE(h.io.write_pending.has_value());  // nothing resent

  h.ack(99);  // beyond anything spooled: clamped to the newest batch
  s = h.spool().stats();
  CHECK(s.acked_seq == 4);
  CHECK(s.records == 0);
  CHECK(h.counters().connected);

  h.submit();
  h.deliver_all();
  CHECK(h.collector.received.back() == 5);  // seqs go on from the newest appended
}

TEST_CASE("session: RetryLater closes, backs off and resends what was not acked") {
  Harness h;
  h.session->start();
  h.connect();
  h.submit(3);
  h.deliver_all();
  h.ack(1);
  const int closes = h.io.closes;
  h.answer(2, wire::AckStatus::RetryLater, "store unavailable");
  ship::ShipperCounters c = h.counters();
  CHECK(c.retry_later == 1);
  CHECK_FALSE(c.connected);
  CHECK(c.last_error == "collector asked to retry later");
  CHECK(h.io.closes == closes + 1);
  CHECK(h.session->failures() == 1);
  CHECK(h.backoff_delay() <= h.session->backoff_ceiling(1));
  CHECK(h.session->backoff_ceiling(1) == 1000ms);
  h.wait_out_backoff();
  h.connect();
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 2, 3});
  h.ack(3);
  CHECK(h.spool().stats().records == 0);
  CHECK(h.session->failures() == 0);

  // The session limit answer comes right after the handshake, with seq 0: the same path.
  h.submit();
  h.answer(0, wire::AckStatus::RetryLater, "session limit reached");
  CHECK(h.counters().retry_later == 2);
  CHECK(h.spool().stats().records == 1);
  h.wait_out_backoff();
}

TEST_CASE(
    "session: Rejected, for each reason the collector gives, refuses and keeps retrying, and a drain stops "
    "waiting") {
  for (const std::string& reason : kRefusals) {
    CAPTURE(reason);
    Harness h;
    h.session->start();
    h.connect();
    h.submit(2);
    h.deliver_all();
    h.answer(0, wire::AckStatus::Rejected, reason);
    const ship::ShipperCounters c = h.counters();
    CHECK(c.rejected == 1);
    CHECK(c.last_error == "refused: " + reason);
    CHECK_FALSE(c.connected);
    CHECK(h.spool().stats().records == 2);  // nothing is lost to a refusal
    CHECK(h.backoff_delay() <= h.session->backoff_ceiling(1));
    bool drained = false;
    h.session->drain(5s, [&] { drained = true; });
    CHECK(drained);                    // acks that cannot come are not waited for
    CHECK(h.io.connects.size() == 1);  // and a refused agent is not rushed back
  }
}

TEST_CASE("session: a rejected batch stays spooled, is offered again first with backoff, its reason escaped") {
  Harness h;
  h.session->start();
  h.connect();
  h.submit(3);
  h.deliver_all();
  h.ack(1);
  // The collector refuses batch 2 for a string rule; its reason is a peer's bytes.
  const std::string hostile = "batch 2: Batch.latency[0].target: bad\nforged line\x1b[2J";
  h.answer(2, wire::AckStatus::Rejected, hostile);
  ship::ShipperCounters c = h.counters();
  CHECK(c.rejected == 1);
  CHECK(c.last_error == "refused: batch 2: Batch.latency[0].target: bad\\nforged line\\x1B[2J");
  CHECK_FALSE(c.connected);
  CHECK(h.spool().acked_seq() == 1);
  CHECK(h.spool().stats().records == 2);  // 2 and 3 kept: nothing is deleted for a rejection
  // Every retry offers the spool from the rejected batch on; the delay grows while it is refused.
  std::vector<std::chrono::milliseconds> ceilings;
  for (std::uint32_t round = 1; round <= 4; ++round) {
    CHECK(h.backoff_delay() <= h.session->backoff_ceiling(round));
    ceilings.push_back(h.session->backoff_ceiling(round));
    h.wait_out_backoff();
    h.connect();
    h.collector.received.clear();
    h.deliver_all();
    REQUIRE_FALSE(h.collector.received.empty());
    CHECK(h.collector.received.front() == 2);
    h.answer(2, wire::AckStatus::Rejected, hostile);
    CHECK(h.spool().stats().records == 1 + round);
    h.submit();  // measuring and spooling go on meanwhile
  }
  CHECK(ceilings.back() > ceilings.front());
  CHECK(h.counters().rejected == 5);
  CHECK(h.spool().stats().records == 6);
  // Once the collector takes it (fixed, upgraded), everything drains.
  h.wait_out_backoff();
  h.connect();
  h.deliver_all();
  for (std::uint64_t seq = 2; seq <= 7; ++seq) h.ack(seq);
  CHECK(h.spool().stats().records == 0);
}

TEST_CASE("session: the in-memory collector refuses as the real one does, and the agent counts it") {
  SUBCASE("region not served") {
    Harness h;
    h.collector.regions = {"us-east", "us-west"};
    h.session->start();
    h.connect();
    h.deliver_one();
    h.read_answers();
    CHECK(h.counters().last_error ==
          "refused: region 'eu-central' is not served here (serves: us-east, us-west)");
  }
  SUBCASE("identity mismatch") {
    Harness h;
    h.collector.certificate_cn = "ams1-edge-01";
    h.session->start();
    h.connect();
    h.deliver_one();
    h.read_answers();
    CHECK(h.counters().last_error ==
          "refused: Hello claims agent 'fra1-edge-07' but the certificate is for 'ams1-edge-01'");
  }
  SUBCASE("no reason given") {
    Harness h;
    h.session->start();
    h.connect();
    h.answer(0, wire::AckStatus::Rejected, "");
    CHECK(h.counters().last_error == "refused: no reason given");
  }
}

TEST_CASE("session: an ack after a refusal clears it, so a drain waits for acks again") {
  Harness h;
  h.session->start();
  h.connect();
  h.answer(0, wire::AckStatus::Rejected, "a second Hello");
  h.wait_out_backoff();
  h.connect();
  h.submit();
  h.deliver_all();
  h.ack(1);  // an operator fixed it: an ack clears the refusal, drains wait again
  h.submit();
  bool drained = false;
  h.session->drain(5s, [&] { drained = true; });
  CHECK_FALSE(drained);
  h.deliver_all();
  h.ack(2);
  CHECK(drained);
  // The batches after the refusal and reconnect report the one reconnect and the refusal.
  CHECK(h.collector.last_reconnects == 1);
  CHECK(h.collector.last_rejected == 1);
}

TEST_CASE(
    "session: a disconnect mid-window resends the unacked batches after exponential backoff with full "
    "jitter") {
  Harness h([](ship::ShipperConfig& c) {
    c.max_in_flight = 4;
    c.backoff_initial = 500ms;
    c.backoff_max = 30'000ms;
  });
  h.session->start();
  h.connect();
  h.submit(6);
  h.deliver_all();
  REQUIRE(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4});
  h.ack(1);
  h.ack(2);
  h.deliver_all();
  REQUIRE(h.collector.received == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6});
  h.session->on_peer_closed();
  CHECK(h.counters().last_error == "collector closed the connection");

  // Each failure without an ack in between doubles the ceiling, up to backoff_max.
  std::uint32_t failures = 1;
  CHECK(h.session->failures() == failures);
  CHECK(h.backoff_delay() <= 1000ms);
  h.wait_out_backoff();
  h.session->on_connect_failed("Connection refused");
  CHECK(h.counters().last_error == "connect to collector-b:7444: Connection refused");
  CHECK(h.backoff_delay() <= 2000ms);
  h.wait_out_backoff();
  h.advance(h.config.connect_timeout);  // no answer to the SYN
  CHECK(h.counters().last_error == "connect to collector-a:7443: timed out");
  CHECK(h.backoff_delay() <= 4000ms);
  h.wait_out_backoff();
  h.session->on_connected();
  h.session->on_handshake_failed("-0x7780: SSL - A fatal alert message was received from our peer");
  CHECK(h.backoff_delay() <= 8000ms);
  h.wait_out_backoff();
  h.session->on_connected();
  h.advance(h.config.handshake_timeout);
  CHECK(h.counters().last_error == "TLS handshake with collector-a: timed out");
  failures = 5;
  CHECK(h.session->failures() == failures);
  CHECK(h.counters().connect_failures == 2);
  CHECK(h.counters().tls_failures == 2);

  // At the cap, the delay is spread over the whole [0, backoff_max] range.
  milliseconds lowest = 30'000ms, highest = 0ms;
  for (int i = 0; i < 40; ++i) {
    const milliseconds ceiling = h.session->backoff_ceiling(h.session->failures());
    CHECK(ceiling == std::min(30'000ms, milliseconds(500 << std::min(h.session->failures(), 20u))));
    const milliseconds delay = h.backoff_delay();
    CHECK(delay >= 0ms);
    CHECK(delay <= ceiling);
    if (h.session->failures() >= 6) {
      lowest = std::min(lowest, delay);
      highest = std::max(highest, delay);
    }
    h.wait_out_backoff();
    h.session->on_connect_failed("Connection refused");
  }
  CHECK(h.session->failures() == 45);
  CHECK(lowest < 10'000ms);
  CHECK(highest > 20'000ms);

  // Back at last: Hello, then exactly the unacked batches, in order.
  h.wait_out_backoff();
  h.connect();
  h.deliver_all();
  CHECK(h.collector.frames == std::vector<wire::Message>{wire::Message::Hello, wire::Message::Batch,
                                                         wire::Message::Batch, wire::Message::Batch,
                                                         wire::Message::Batch});
  CHECK(std::vector<std::uint64_t>(h.collector.received.begin() + 6, h.collector.received.end()) ==
        std::vector<std::uint64_t>{3, 4, 5, 6});
  // Still no ack: the failures stand until one comes, then the next outage starts short again.
  CHECK(h.session->failures() == 45);
  h.ack(6);
  CHECK(h.session->failures() == 0);
  h.session->on_read_failed("Connection reset by peer");
  CHECK(h.counters().last_error == "read: Connection reset by peer");
  CHECK(h.backoff_delay() <= 1000ms);
  CHECK(h.counters().connects == 2);
}

TEST_CASE("session: a resolve failure is not a connect failure, and the backoff still follows") {
  Harness h;
  h.io.on_connect = [&] { h.session->on_resolve_failed("Host not found (authoritative)"); };
  h.session->start();
  CHECK(h.counters().last_error == "resolve collector-a: Host not found (authoritative)");
  CHECK(h.counters().connect_failures == 0);
  CHECK(h.backoff_delay() <= 1000ms);  // the backoff, not the connect timeout
  h.io.on_connect = nullptr;
  h.wait_out_backoff();
  CHECK(h.io.connects.back().host == "collector-b");
  CHECK(h.io.timer(SessionTimer::kConnection) == h.now + h.config.connect_timeout);
}

TEST_CASE("session: a collector name that resolves ends a reconnect backoff at once") {
  Harness h;
  h.io.on_connect = [&] { h.session->on_resolve_failed("Name or service not known"); };
  h.session->start();
  for (int i = 0; i < 6; ++i) {  // the backoff grows while the names do not resolve
    h.wait_out_backoff();
  }
  const std::size_t attempts = h.io.connects.size();
  REQUIRE(h.io.timer(SessionTimer::kConnection));  // waiting out a backoff
  h.io.on_connect = nullptr;
  h.session->on_collector_resolved();
  REQUIRE(h.io.connects.size() == attempts + 1);  // tried now, not at the end of the backoff
  CHECK(h.io.timer(SessionTimer::kConnection) == h.now + h.config.connect_timeout);
  // While connecting (or connected) the news changes nothing.
  h.session->on_collector_resolved();
  CHECK(h.io.connects.size() == attempts + 1);
  h.connect();
  h.session->on_collector_resolved();
  CHECK(h.io.connects.size() == attempts + 1);
  CHECK(h.counters().connected);
}

TEST_CASE("session: unacked data outstanding for ack_timeout ends the connection") {
  Harness h;
  h.session->start();
  h.connect();
  h.deliver_all();
  h.advance(h.config.ack_timeout * 3);  // an idle connection is kept
  CHECK(h.counters().connected);
  h.submit();
  h.deliver_all();
  h.advance(h.config.ack_timeout - 1ms);
  CHECK(h.counters().connected);
  h.advance(1ms);
  CHECK_FALSE(h.counters().connected);
  CHECK(h.counters().last_error == "no ack for 30000 ms");
}

TEST_CASE("session: a malformed frame or a message other than Ack ends the connection") {
  SUBCASE("not an Ack") {
    Harness h;
    h.session->start();
    h.connect();
    std::vector<std::uint8_t> hello;
    wire::append_frame(hello, ship::build_hello_frame(h.config.identity, 0));
    h.session->on_bytes(hello);
    CHECK(h.counters().last_error == "collector sent something other than an Ack");
  }
  SUBCASE("too large") {
    Harness h([](ship::ShipperConfig& c) { c.max_frame = 1024; });
    h.session->start();
    h.connect();
    const std::vector<std::uint8_t> bytes{0x00, 0x10, 0x00, 0x00};  // 4 KiB announced
    h.session->on_bytes(bytes);
    CHECK(h.counters().last_error ==
          std::string("bad frame from collector: ") + wire::to_string(wire::FrameStatus::kTooLarge));
  }
  SUBCASE("a write fails") {
    Harness h;
    h.session->start();
    h.connect();
    h.session->on_write_failed("Broken pipe");
    CHECK(h.counters().last_error == "write: Broken pipe");
    CHECK(h.counters().frames_sent == 0);
  }
}

TEST_CASE("session: drain on shutdown waits for the acks up to its limit, then stops with the rest spooled") {
  SUBCASE("every ack arrives in time") {
    Harness h;
    h.session->start();
    h.connect();
    h.submit(3);
    h.deliver_all();
    bool drained = false;
    h.session->drain(5s, [&] { drained = true; });
    h.ack(2);
    CHECK_FALSE(drained);
    h.advance(4s);
    CHECK_FALSE(drained);
    h.ack(3);
    CHECK(drained);
    CHECK_FALSE(h.io.timer(SessionTimer::kDrain).has_value());
    h.session->shut_down();
    CHECK(h.spool().stats().records == 0);
    CHECK(h.counters().last_error == "agent stopping");
  }
  SUBCASE("the limit passes first") {
    Harness h;
    h.session->start();
    h.connect();
    h.submit(2);
    h.deliver_all();
    int drained = 0;
    h.session->drain(5s, [&] { ++drained; });
    h.ack(1);
    h.advance(4999ms);
    CHECK(drained == 0);
    h.advance(1ms);
    CHECK(drained == 1);
    h.ack(2);  // a late ack does not call back twice
    CHECK(drained == 1);
    h.submit();
    h.session->shut_down();
    const std::size_t attempts = h.io.connects.size();
    CHECK_FALSE(h.counters().connected);
    CHECK(h.counters().last_error == "agent stopping");
    CHECK(h.spool().stats().records == 1);                         // the rest stays for the next start
    CHECK(h.spool().durable_seq() == 3);                           // flushed
    for (const auto& t : h.io.timers) CHECK_FALSE(t.has_value());  // no reconnect, no flush
    h.submit();                                                    // ignored once stopping
    CHECK(h.counters().batches_spooled == 3);
    h.advance(1h);
    CHECK(h.io.connects.size() == attempts);
  }
  SUBCASE("a session waiting out a backoff tries again right away") {
    Harness h([](ship::ShipperConfig& c) { c.backoff_initial = 10s; });
    h.session->start();
    h.session->on_connect_failed("Connection refused");
    h.submit();
    REQUIRE(h.backoff_delay() > 0ms);
    bool drained = false;
    h.session->drain(5s, [&] { drained = true; });
    CHECK(h.io.connects.size() == 2);
    h.connect();
    h.deliver_all();
    CHECK_FALSE(drained);
    h.ack(1);
    CHECK(drained);
  }
  SUBCASE("with no limit, or nothing to wait for, it returns at once") {
    Harness h([](ship::ShipperConfig& c) { c.backoff_initial = 10s; });
    h.session->start();
    h.session->on_connect_failed("Connection refused");
    bool drained = false;
    h.session->drain(5s, [&] { drained = true; });
    CHECK(drained);                    // nothing spooled
    CHECK(h.io.connects.size() == 1);  // and no reason to hurry a connect
    h.submit();
    drained = false;
    h.session->drain(0ms, [&] { drained = true; });
    CHECK(drained);
    CHECK(h.io.connects.size() == 1);
  }
}

TEST_CASE("session: the spool is flushed every fsync_interval and before a batch beyond it is sent") {
  // An hour, so the spool's own interval check in append() cannot sync on a slow machine.
  Harness h([](ship::ShipperConfig& c) { c.spool.fsync_interval = 1h; });
  h.session->start();
  h.submit(2);
  CHECK(h.spool().durable_seq() == 0);
  h.advance(1h);
  CHECK(h.spool().durable_seq() == 2);
  CHECK(h.io.timer(SessionTimer::kFlush) == h.now + 1h);
  h.submit();
  CHECK(h.spool().durable_seq() == 2);
  h.session->on_connected();
  h.session->on_session("TLSv1.2", false);
  h.deliver_all();
  CHECK(h.collector.received == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(h.spool().durable_seq() == 3);  // synced before it went out
}
