// The shipper's session over a spool whose disk fails (through the SpoolFiles seam): a full disk
// while the collector is away, a disk that stays full, a hung fsync. The session never blocks,
// keeps measuring into the spool, and every batch it made is stored, counted as dropped or counted
// as lost, with the counts travelling in each Batch (spool_dropped, self.spool_lost/spool_errors).
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include "agent/ship/shipper.hpp"
#include "agent/ship/shipper_session.hpp"
#include "schemas/frame_codec.hpp"
#include "tests/agent/ship/spool_fault_util.hpp"
#include "tests/agent/ship/spool_test_util.hpp"
#include "vantage/telemetry_generated.h"

namespace {

namespace ship = vantage::agent::ship;
namespace wire = vantage::wire;
using namespace std::chrono_literals;
using namespace spool_test;
using ship::SessionTimer;

class Io final : public ship::SessionIo {
 public:
  int connects = 0;
  std::optional<std::vector<std::uint8_t>> pending;
  void connect(const ship::CollectorAddress&) override { ++connects; }
  void write(std::span<const std::uint8_t> bytes) override { pending.emplace(bytes.begin(), bytes.end()); }
  void close() override { pending.reset(); }
  void arm_timer(SessionTimer, ship::SessionClock::time_point) override {}
  void cancel_timer(SessionTimer) override {}
};

// Stores every Batch it is sent (once per seq) and acks it; remembers the latest counts.
struct Collector {
  std::set<std::uint64_t> stored;
  std::uint64_t spool_dropped = 0;
  wire::AgentSelfValues self;
  std::vector<std::uint8_t> acks;

  void receive(std::span<const std::uint8_t> bytes) {
    wire::FrameReader reader;
    reader.feed(bytes);
    REQUIRE(reader.next() == wire::FrameStatus::kFrame);
    const wire::Batch* b = reader.frame()->message_as_Batch();
    if (b == nullptr) return;  // the Hello
    stored.insert(b->seq());
    spool_dropped = b->spool_dropped();
    REQUIRE(b->self() != nullptr);
    self = wire::agent_self_values(*b->self());
    flatbuffers::FlatBufferBuilder fbb;
    wire::AckBuilder ack(fbb);
    ack.add_seq(b->seq());
    ack.add_status(wire::AckStatus::Stored);
    wire::FinishFrameBuffer(fbb, wire::CreateFrame(fbb, wire::Message::Ack, ack.Finish().Union()));
    wire::append_frame(acks, {fbb.GetBufferPointer(), fbb.GetSize()});
  }
};

struct World {
  TempDir dir{"/dev/shm"};
  std::shared_ptr<FaultySpoolFiles> files = std::make_shared<FaultySpoolFiles>();
  Io io;
  Collector collector;
  std::unique_ptr<ship::ShipperSession> session;
  std::uint64_t made = 0;

  explicit World(std::chrono::milliseconds sync_wait = std::chrono::seconds(30)) {
    ship::ShipperConfig c;
    c.identity = {"fra1-edge-07", "eu-central", "fra1"};
    c.collectors = {{"collector-a", 7443, ""}};
    c.spool.dir = dir.path();
    c.spool.segment_bytes = 1024;
    c.spool.reserve_bytes = 4096;
    c.spool.sync_wait = sync_wait;
    c.spool.files = files;
    std::vector<std::string> warnings;
    auto opened = ship::Spool::open(c.spool, warnings);
    REQUIRE(opened.has_value());
    session = std::make_unique<ship::ShipperSession>(
        c, std::move(opened).value(), io, [] { return ship::SessionClock::now(); }, 7);
    session->publish_spool_counters();
    session->start();
  }

  void submit(int n) {
    for (int i = 0; i < n; ++i) {
      vantage::agent::MeasurementReport r;
      r.wall_start_ns = 1'700'000'000'000'000'000;
      r.wall_end_ns = r.wall_start_ns + 1'000'000'000;
      session->submit(r, {});
      ++made;
    }
  }
  void connect() {
    session->on_connected();
    session->on_session("TLSv1.3", false);
  }
  // Everything the session writes reaches the collector, and its acks come back. A healthy sync
  // that outlasted its wait on a loaded machine holds sending back until the flush timer retries:
  // that is waited out too, unless the test hangs the sync on purpose.
  void deliver(bool wait_out_stalls = true) {
    for (int round = 0; round < 3000; ++round) {
      while (io.pending) {
        const std::vector<std::uint8_t> bytes = std::move(*io.pending);
        io.pending.reset();
        collector.receive(bytes);
        session->on_write_done();
        if (!collector.acks.empty()) {
          const std::vector<std::uint8_t> acks = std::move(collector.acks);
          collector.acks.clear();
          session->on_bytes(acks);
        }
      }
      const ship::Spool& spool = session->spool();
      if (!wait_out_stalls || !session->counters().connected || spool.durable_seq() + 1 >= spool.next_seq()) {
        return;
      }
      std::this_thread::sleep_for(10ms);
      session->on_timer(SessionTimer::kFlush);
    }
  }
};

}  // namespace

TEST_CASE("shipper over a failing disk: full while the collector is away, then full for good, then fine") {
  World w;
  w.connect();
  w.submit(5);
  w.deliver();
  REQUIRE(w.collector.stored.size() == 5);

  w.session->on_peer_closed();  // the collector goes away: batches pile up in the spool
  w.submit(20);
  // The disk fills: the oldest spooled batches make room for the new ones.
  w.files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, 1}});
  w.submit(1);
  CHECK(w.session->counters().spool.full_disk_drops > 0);
  CHECK(w.session->counters().spool.lost() == 0);
  // Full for good (the state file cannot be written either): batches are lost, and counted.
  w.files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, kForever}});
  w.submit(3);
  CHECK(w.session->counters().spool.lost() == 3);
  w.files->clear();
  w.submit(2);

  w.session->on_timer(SessionTimer::kConnection);  // the backoff ends: reconnect
  w.connect();
  w.deliver();
  w.submit(1);  // a batch that carries the counts as they are now
  w.deliver();

  const ship::ShipperCounters c = w.session->counters();
  CHECK(c.spool.records == 0);
  const std::uint64_t stored = w.collector.stored.size();
  const std::uint64_t dropped = w.collector.spool_dropped;
  const std::uint64_t lost = w.collector.self.spool_lost;
  INFO("made ", w.made, ", stored ", stored, ", dropped ", dropped, ", lost ", lost);
  CHECK(dropped > 0);
  CHECK(lost == 3);
  CHECK(stored + dropped + lost == w.made);
  CHECK(w.collector.self.spool_errors >= 3);  // the three failed appends at least
  // Stored seqs run 1..N with the dropped ones missing, never a seq twice.
  CHECK(*w.collector.stored.rbegin() == stored + dropped);
}

TEST_CASE("shipper over a failing disk: a hung fsync holds sending back, not the session") {
  World w(300ms);
  w.connect();
  w.submit(2);
  w.deliver();
  REQUIRE(w.collector.stored.size() == 2);
  const std::uint64_t stalls = w.session->spool().stats().sync_stalls;  // a loaded machine's, if any

  w.files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kBlock, 0, kForever}});
  w.submit(3);  // returns: the session waited sync_wait at most, once
  w.deliver(false);
  CHECK(w.files->blocked());
  CHECK(w.collector.stored.size() == 2);  // not durable, so not sent
  CHECK(w.session->spool().stats().sync_stalls == stalls + 1);
  CHECK(w.session->counters().spool.records == 3);
  w.session->on_timer(SessionTimer::kFlush);  // the flush timer finds the sync still hung
  w.deliver(false);
  CHECK(w.collector.stored.size() == 2);

  w.files->release();
  for (int i = 0; i < 3000 && w.collector.stored.size() < 5; ++i) {
    std::this_thread::sleep_for(10ms);
    w.session->on_timer(SessionTimer::kFlush);  // the next flush finds the disk back and sends
    w.deliver(false);
  }
  CHECK(w.collector.stored.size() == 5);
  w.submit(1);
  w.deliver();
  CHECK(w.collector.stored.size() == 6);
  CHECK(w.collector.self.spool_sync_stalls == w.session->spool().stats().sync_stalls);  // reached the collector
  CHECK(w.collector.self.spool_sync_stalls >= stalls + 1);
  CHECK(w.collector.self.spool_lost == 0);
}

TEST_CASE("shipper over a failing disk: a hung fsync leaves the shipper's thread responsive, as the watchdog asks") {
  // The daemon pings the watchdog only while Shipper::responsive() holds (agent/main.cpp), so a
  // sync that never returns must not hold the shipper's thread.
  TempDir dir{"/dev/shm"};
  const std::string pki = (dir.path() / "pki").string();
  REQUIRE(std::system(("bash '" VANTAGE_SOURCE_DIR "/tools/dev-pki.sh' '" + pki + "' a1:eu-central >/dev/null").c_str()) ==
          0);
  auto files = std::make_shared<FaultySpoolFiles>();
  ship::ShipperConfig c;
  c.identity = {"a1", "eu-central", "a1"};
  c.collectors = {{"127.0.0.1", 1, ""}};  // nobody there: the shipper keeps retrying
  c.tls.ca_file = pki + "/ca.crt";
  c.tls.cert_file = pki + "/a1.crt";
  c.tls.key_file = pki + "/a1.key";
  c.spool.dir = dir.path() / "spool";
  c.spool.fsync_interval = 100ms;  // the flush timer syncs often
  c.spool.sync_wait = 200ms;
  c.spool.files = files;
  std::vector<std::string> warnings;
  auto opened = ship::Shipper::open(c, warnings);
  INFO(opened.error());
  REQUIRE(opened.has_value());
  std::unique_ptr<ship::Shipper> shipper = std::move(opened).value();
  shipper->start();
  files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kBlock, 0, kForever}});
  for (int i = 0; i < 20; ++i) {
    vantage::agent::MeasurementReport r;
    r.wall_start_ns = 1'700'000'000'000'000'000;
    r.wall_end_ns = r.wall_start_ns + 1'000'000'000;
    shipper->submit(r, {});
    CHECK(shipper->responsive(2s));
    std::this_thread::sleep_for(50ms);
  }
  CHECK(files->blocked());
  const ship::ShipperCounters counters = shipper->counters();
  CHECK(counters.batches_spooled == 20);
  CHECK(counters.spool.sync_stalls >= 1);
  files->release();
  shipper->stop(0ms);
}

TEST_CASE("shipper over a failing disk: a slow disk (every fsync outlasts sync_wait) still delivers and frees the spool") {
  World w(500ms);  // the production sync_wait
  w.connect();
  w.files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kDelay, 0, kForever, 700ms}});
  w.submit(8);
  REQUIRE(w.session->spool().stats().segments >= 2);
  for (int i = 0; i < 600 && (w.collector.stored.size() < 8 || w.session->spool().stats().segments > 0); ++i) {
    std::this_thread::sleep_for(100ms);
    w.session->on_timer(SessionTimer::kFlush);  // the flush timer, faster than production's 1 s
    w.deliver(false);
  }
  CHECK(w.collector.stored.size() == 8);
  CHECK(w.session->spool().acked_seq() == 8);
  CHECK(w.session->spool().stats().segments == 0);  // the state was saved, so the segments went
  CHECK_FALSE(w.session->spool().stats().state_unsaved);
  CHECK(w.session->spool().stats().sync_stalls > 0);
  CHECK(w.session->counters().spool_errors == 0);
  CHECK(w.collector.self.spool_lost == 0);
}

namespace {

// A session over the spool in dir, as a reload makes it: the config's baseline is the one the
// previous shipper left.
std::unique_ptr<ship::ShipperSession> session_over(const fs::path& dir, Io& io, const ship::SelfBaseline& baseline,
                                                   std::shared_ptr<FaultySpoolFiles> files = nullptr) {
  ship::ShipperConfig c;
  c.identity = {"fra1-edge-07", "eu-central", "fra1"};
  c.collectors = {{"collector-a", 7443, ""}};
  c.spool.dir = dir;
  c.spool.segment_bytes = 1 << 16;
  c.spool.files = std::move(files);
  c.self_baseline = baseline;
  std::vector<std::string> warnings;
  auto opened = ship::Spool::open(c.spool, warnings);
  REQUIRE(opened.has_value());
  auto session = std::make_unique<ship::ShipperSession>(
      c, std::move(opened).value(), io, [] { return ship::SessionClock::now(); }, 7);
  session->publish_spool_counters();
  session->start();
  return session;
}

void submit_to(ship::ShipperSession& session, int n) {
  for (int i = 0; i < n; ++i) {
    vantage::agent::MeasurementReport r;
    r.wall_start_ns = 1'700'000'000'000'000'000;
    r.wall_end_ns = r.wall_start_ns + 1'000'000'000;
    session.submit(r, {});
  }
}

}  // namespace

TEST_CASE("shipper over a failing disk: what pump() counted reaches the baseline a reload carries over") {
  World w;
  w.connect();
  w.submit(1);
  w.deliver();
  REQUIRE(w.collector.stored.size() == 1);
  // The next batch cannot be read back: pump() counts a retried error after the submit published.
  w.files->arm({Fault{SpoolOp::kRead, 1, FaultAction::kErrno, EIO, kForever}});
  w.submit(1);
  const std::uint64_t retried = w.session->spool().stats().retried_errors;
  REQUIRE(retried >= 1);
  w.session->shut_down();
  const ship::ShipperCounters c = w.session->counters();
  CHECK(c.spool.retried_errors == retried);
  ship::SelfBaseline baseline;
  ship::add_to_baseline(baseline, c);
  CHECK(baseline.spool_errors == c.spool_errors + retried);
}

TEST_CASE("shipper over a failing disk: a record given up as unreadable is not counted again after a reload") {
  TempDir dir{"/dev/shm"};
  Io io;
  ship::SelfBaseline baseline;
  auto files = std::make_shared<FaultySpoolFiles>();
  {
    auto a = session_over(dir.path(), io, baseline, files);
    submit_to(*a, 3);  // not connected: spooled, not read yet
    // Batch 2's header read fails every time (reads 1 and 2 are batch 1's header and payload).
    files->arm({Fault{SpoolOp::kRead, 3, FaultAction::kErrno, EIO, 3}});
    a->on_connected();
    a->on_session("TLSv1.3", false);
    a->on_write_done();  // the Hello: pump() sends 1, fails on 2
    a->on_write_done();  // batch 1: pump() fails on 2 again
    submit_to(*a, 1);    // batch 4: pump() fails on 2 a third time and gives it up
    CHECK(a->spool().stats().corrupt_reads == 1);
    CHECK(a->spool().stats().records == 3);
    a->shut_down();
    ship::add_to_baseline(baseline, a->counters());
  }
  CHECK(baseline.spool_lost == 1);
  files->clear();
  auto b = session_over(dir.path(), io, baseline, files);  // the reload opens the spool again
  CHECK(b->spool().stats().records == 3);  // 2 stays given up: it is in spool_lost already
  CHECK(b->spool().stats().lost() == 0);
}

TEST_CASE("shipper over a failing disk: one batch lost to a full disk is one spool error") {
  World w;
  w.submit(1);
  const std::uint64_t retried = w.session->spool().stats().retried_errors;
  // Nothing can be written: not the batch, not the state file that dropping would need.
  w.files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, kForever}});
  w.submit(1);
  const ship::ShipperCounters c = w.session->counters();
  CHECK(c.spool.append_failures == 1);
  CHECK(c.spool.lost() == 1);
  CHECK(c.spool_errors + c.spool.retried_errors - retried == 1);
}

TEST_CASE("shipper over a failing disk: on a slow disk batches go out while new ones keep coming") {
  World w(500ms);  // the production sync_wait
  w.connect();
  w.files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kDelay, 0, kForever, 700ms}});
  // A batch and a flush every 100 ms (when nothing waits on the disk), 20 of each: every flush
  // finds new data and starts a sync that outlasts its wait, yet the ones that returned let their
  // batches go. (Each round waits out about 3 s of fsyncs on the session's thread.)
  for (int i = 0; i < 20; ++i) {
    w.submit(1);
    w.deliver(false);
    std::this_thread::sleep_for(100ms);
    w.session->on_timer(SessionTimer::kFlush);
    w.deliver(false);
  }
  INFO("stored while batches kept coming: ", w.collector.stored.size());
  CHECK(w.collector.stored.size() >= 10);
  CHECK(w.session->counters().spool_errors == 0);
}
