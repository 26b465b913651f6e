// The spool under disk faults injected through its SpoolFiles seam: ENOSPC, EIO and short
// writes at the Nth call of each kind of operation (and of any kind), full disks that drop the
// oldest records to make room, state files that cannot be saved, and an fsync that hangs. After
// every fault the books balance (records appended = live + delivered + dropped + lost) and the
// spool works again once the fault clears.
#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/ship/spool.hpp"
#include "tests/agent/ship/spool_fault_util.hpp"
#include "tests/agent/ship/spool_test_util.hpp"

namespace {

using namespace spool_test;
using namespace std::chrono_literals;
using vantage::agent::ship::SpoolStats;
using vantage::platform::Errc;
using vantage::platform::Status;

// What a shipper would know: batches handed to the spool and batches the collector acked.
struct Books {
  std::uint64_t attempts = 0;
  std::uint64_t delivered = 0;
  std::uint64_t last_read = 0;
};

std::string describe(const SpoolStats& st) {
  return "live " + std::to_string(st.records) + ", dropped " + std::to_string(st.dropped_total) +
         " (full disk " + std::to_string(st.full_disk_drops) + "), append failures " +
         std::to_string(st.append_failures) + ", corrupt reads " + std::to_string(st.corrupt_reads) +
         ", retried errors " + std::to_string(st.retried_errors);
}

void check_books(const Spool& s, const Books& b) {
  const SpoolStats st = s.stats();
  INFO(describe(st), ", delivered ", b.delivered, ", attempts ", b.attempts);
  CHECK(b.attempts == st.records + b.delivered + st.dropped_total + st.lost());
}

void attempt(Spool& s, Books& b, std::size_t size) {
  ++b.attempts;
  const std::uint64_t seq = s.next_seq();
  (void)s.append(seq, payload_for(seq, size));  // a failure is counted by the spool
}

// Reads up to max records as the shipper sends them and acks the last one, as the collector would.
void deliver(Spool& s, Books& b, int max) {
  std::uint64_t last = 0;
  for (int k = 0; k < max; ++k) {
    const std::optional<vantage::agent::ship::SpoolRecord> r = s.next_unacked(std::max(b.last_read, s.acked_seq()));
    if (!r) break;
    CHECK(r->payload == payload_for(r->seq, r->payload.size()));
    ++b.delivered;
    b.last_read = r->seq;
    last = r->seq;
  }
  if (last != 0) (void)s.ack(last);  // acked_seq moves even when the state cannot be saved
}

SpoolConfig fault_config(const fs::path& dir, std::shared_ptr<FaultySpoolFiles> files, bool every_record) {
  SpoolConfig c = small_config(dir);
  c.max_bytes = 700;
  c.segment_bytes = 200;
  c.reserve_bytes = 4096;
  c.fsync = every_record ? SpoolConfig::Fsync::kEveryRecord : SpoolConfig::Fsync::kInterval;
  c.fsync_interval = 0ms;
  c.files = std::move(files);
  return c;
}

// flush(), again while a sync is still running (a loaded machine can make a healthy fsync outlast
// its wait; the spool then reports it pending and the next call retries).
Status flush_until_done(Spool& s) {
  Status st = s.flush();
  for (int i = 0; i < 3000 && st.code() == Errc::kUnavailable; ++i) {
    std::this_thread::sleep_for(10ms);
    st = s.flush();
  }
  return st;
}

// Opens through faults; each armed fault is finite, so some attempt succeeds.
std::optional<Spool> open_through(const SpoolConfig& c) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::vector<std::string> warnings;
    auto o = Spool::open(c, warnings);
    if (o) return std::move(o).value();
  }
  return std::nullopt;
}

// What the fault runs went through, to show the matrix reaches every path.
struct Tally {
  std::uint64_t runs = 0, injected = 0, append_failures = 0, full_disk_drops = 0, corrupt_reads = 0,
                unsaved = 0, retried = 0;
};
Tally g_tally;

// One run: faults armed before open, a shipper-like workload, then the fault clears and the
// spool must append, deliver, ack, flush and reopen as if nothing had happened.
void report_tally(const std::string& what) {
  MESSAGE(what << ": " << g_tally.runs << " runs, a fault hit in " << g_tally.injected << ", appends lost in "
                << g_tally.append_failures << ", full-disk drops in " << g_tally.full_disk_drops
                << ", records given up in " << g_tally.corrupt_reads << ", state unsaved at the end of the faults in "
                << g_tally.unsaved << ", errors retried inside the spool in " << g_tally.retried);
  CHECK(g_tally.injected > 0);
  g_tally = Tally{};
}

void run(const std::vector<Fault>& faults, bool every_record) {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  const SpoolConfig cfg = fault_config(tmp.path() / "spool", files, every_record);
  Books b;
  {
    // A spool with records and a torn tail, so that open() has segments to stat, read and cut.
    auto o = open_ok(cfg);
    for (int i = 0; i < 6; ++i) append_ok(o.spool, 30);
    b.attempts = 6;
  }
  {
    const fs::path last = segment_files(cfg.dir).back();
    std::vector<char> bytes = read_bytes(last);
    bytes.insert(bytes.end(), {'t', 'o', 'r', 'n'});
    write_bytes(last, bytes);
  }
  files->arm(faults);
  std::optional<Spool> opened = open_through(cfg);
  REQUIRE(opened.has_value());
  Spool& s = *opened;
  for (int i = 0; i < 40; ++i) {
    attempt(s, b, 20 + static_cast<std::size_t>(i % 17));
    if (i % 3 == 2) deliver(s, b, 2);
    if (i % 5 == 4) (void)s.flush();
  }
  check_books(s, b);
  {
    const SpoolStats st = s.stats();
    ++g_tally.runs;
    g_tally.injected += files->injected() > 0 ? 1 : 0;
    g_tally.append_failures += st.append_failures > 0 ? 1 : 0;
    g_tally.full_disk_drops += st.full_disk_drops > 0 ? 1 : 0;
    g_tally.corrupt_reads += st.corrupt_reads > 0 ? 1 : 0;
    g_tally.unsaved += st.state_unsaved ? 1 : 0;
    g_tally.retried += st.retried_errors > 0 ? 1 : 0;
  }

  files->clear();
  for (int i = 0; i < 5; ++i) {
    const std::uint64_t seq = s.next_seq();
    ++b.attempts;
    const Status st = s.append(seq, payload_for(seq, 25));
    INFO(st.message());
    REQUIRE(st);
  }
  for (int round = 0; round < 20 && s.stats().records > 0; ++round) deliver(s, b, 8);
  const Status acked = s.ack(s.next_seq() - 1);
  INFO(acked.message());
  CHECK((acked || acked.code() == Errc::kUnavailable));  // a loaded machine's slow sync: flush saves it
  const Status flushed = flush_until_done(s);
  INFO(flushed.message());
  CHECK(flushed);
  CHECK(s.stats().records == 0);
  CHECK_FALSE(s.stats().state_unsaved);
  CHECK(s.durable_seq() == s.next_seq() - 1);
  check_books(s, b);
  CHECK(segment_files(cfg.dir).size() == s.stats().segments);

  const std::uint64_t next = s.next_seq();
  const std::uint64_t acked_seq = s.acked_seq();
  const auto incarnation = s.incarnation();
  opened.reset();
  auto again = open_ok(cfg);
  CHECK(again.spool.next_seq() == next);
  CHECK(again.spool.acked_seq() == acked_seq);
  CHECK(again.spool.incarnation() == incarnation);
  CHECK(read_all(again.spool).empty());
  append_ok(again.spool, 30);
}

constexpr SpoolOp kAllOps[] = {SpoolOp::kMkdir, SpoolOp::kOpen,  SpoolOp::kList,   SpoolOp::kStat,
                               SpoolOp::kRead,  SpoolOp::kWrite, SpoolOp::kSync,   SpoolOp::kRename,
                               SpoolOp::kUnlink, SpoolOp::kTruncate};
constexpr std::uint64_t kNths[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 20, 25, 32, 45, 64};

}  // namespace

TEST_CASE("spool faults: ENOSPC and EIO at the Nth call of each kind, once and three times in a row") {
  for (const SpoolOp op : kAllOps) {
    for (const int err : {ENOSPC, EIO}) {
      for (const std::uint64_t nth : kNths) {
        for (const std::uint64_t count : {1u, 3u}) {
          CAPTURE(vantage::agent::ship::to_string(op));
          CAPTURE(err);
          CAPTURE(nth);
          CAPTURE(count);
          run({Fault{op, nth, FaultAction::kErrno, err, count}}, nth % 2 == 1);
        }
      }
    }
    report_tally(vantage::agent::ship::to_string(op));  // every kind is reached at least once
  }
}

TEST_CASE("spool faults: short reads and writes, alone and followed by ENOSPC, and a rollback that fails") {
  for (const SpoolOp op : {SpoolOp::kRead, SpoolOp::kWrite}) {
    for (const std::uint64_t nth : kNths) {
      CAPTURE(vantage::agent::ship::to_string(op));
      CAPTURE(nth);
      run({Fault{op, nth, FaultAction::kShort, 0, 1}}, nth % 2 == 0);
      run({Fault{op, nth, FaultAction::kShort, 0, 1}, Fault{op, nth + 1, FaultAction::kErrno, ENOSPC, 2}},
          nth % 2 == 1);
      // A failed write whose rollback (ftruncate) fails too: its seq is used up, nothing repeats.
      if (op == SpoolOp::kWrite) {
        run({Fault{op, nth, FaultAction::kErrno, EIO, 1}, Fault{SpoolOp::kTruncate, 2, FaultAction::kErrno, EIO, 1}},
            nth % 2 == 0);
      }
    }
  }
  report_tally("short");
}

TEST_CASE("spool faults: ENOSPC and EIO at the Nth call of any kind") {
  for (std::uint64_t nth = 1; nth <= 160; ++nth) {
    for (const int err : {ENOSPC, EIO}) {
      CAPTURE(nth);
      CAPTURE(err);
      run({Fault{std::nullopt, nth, FaultAction::kErrno, err, 1}}, nth % 3 == 0);
    }
  }
  report_tally("any kind");
}

TEST_CASE("spool faults: a full disk drops the oldest segment's records, not the new batch") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  for (int i = 0; i < 12; ++i) append_ok(s, 40);  // 60-byte records, 3 to a 200-byte segment
  REQUIRE(s.stats().segments == 4);
  REQUIRE(s.flush());
  const std::uint64_t files_before = segment_files(tmp.path()).size();

  // The next two record writes find the disk full: each time the oldest segment goes.
  files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, 1}});
  append_ok(s, 40);
  CHECK(s.stats().dropped_total == 3);
  CHECK(s.stats().full_disk_drops == 3);
  CHECK(s.stats().append_failures == 0);
  CHECK(s.stats().oldest_seq == 4);
  CHECK(s.stats().newest_seq == 13);
  CHECK(segment_files(tmp.path()).size() == files_before);  // one went, one came
  CHECK(consecutive(read_all(s), 4, 13));

  // A disk that stays full, for the state file too: a drop could not be saved, so it would free
  // nothing. The records are kept, and the batch itself is lost, and counted.
  files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, kForever}});
  const std::uint64_t seq = s.next_seq();
  const Status st = s.append(seq, payload_for(seq, 40));
  CHECK_FALSE(st);
  CHECK(st.code() == Errc::kExhausted);
  CHECK(s.stats().append_failures == 1);
  CHECK(s.stats().dropped_total == 3);
  CHECK(s.stats().records == 10);  // 4..13
  CHECK(s.stats().state_unsaved);
  CHECK(s.next_seq() == seq);
  files->clear();
  append_ok(s, 40);
  CHECK_FALSE(s.stats().state_unsaved);
  CHECK(consecutive(read_all(s), 4, seq));
  // The drops were saved: a restart neither resends nor recounts them.
  o = open_ok(cfg);
  CHECK(o.spool.stats().dropped_total == 3);
  CHECK(consecutive(read_all(o.spool), 4, seq));

  // Nothing live to drop: the batch is lost at once.
  REQUIRE(o.spool.ack(seq));
  files->arm({Fault{SpoolOp::kOpen, 1, FaultAction::kErrno, ENOSPC, kForever}});
  CHECK_FALSE(o.spool.append(seq + 1, payload_for(seq + 1, 40)));
  CHECK(o.spool.stats().append_failures == 1);
  CHECK(o.spool.stats().dropped_total == 3);
  files->clear();
  append_ok(o.spool, 40);
}

TEST_CASE("spool faults: a state file that cannot be saved does not wedge acks") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  for (int i = 0; i < 9; ++i) append_ok(s, 40);
  const auto segments = s.stats().segments;

  files->arm({Fault{SpoolOp::kRename, 1, FaultAction::kErrno, EIO, kForever}});
  CHECK_FALSE(s.ack(4));
  CHECK(s.acked_seq() == 4);  // not resent: the collector holds it
  CHECK(s.next_unacked(0)->seq == 5);
  CHECK(s.stats().state_unsaved);
  CHECK(s.stats().segments == segments);  // kept until the ack is saved
  CHECK_FALSE(s.ack(6));
  CHECK(s.acked_seq() == 6);
  append_ok(s, 40);  // appends go on
  CHECK(s.next_unacked(6)->seq == 7);

  files->clear();
  CHECK(s.ack(6));  // a repeated ack saves what is pending
  CHECK_FALSE(s.stats().state_unsaved);
  CHECK(s.stats().segments < segments);
  CHECK(consecutive(read_all(s), 7, 10));
  o = open_ok(cfg);
  CHECK(o.spool.acked_seq() == 6);
  CHECK(consecutive(read_all(o.spool), 7, 10));

  // flush() also saves a pending state (the shipper's flush timer retries it).
  files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kErrno, EIO, 1}});
  CHECK_FALSE(o.spool.ack(8));
  CHECK(o.spool.stats().state_unsaved);
  CHECK(o.spool.flush());
  CHECK_FALSE(o.spool.stats().state_unsaved);
}

TEST_CASE("spool faults: the reserve file lets drops and acks be saved on a full disk") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  auto o = open_ok(cfg);
  REQUIRE(fs::file_size(tmp.path() / "reserve") == cfg.reserve_bytes);
  for (int i = 0; i < 6; ++i) append_ok(o.spool, 40);
  // Writing the state file finds the disk full once: the reserve goes, and the ack is saved.
  files->arm({Fault{SpoolOp::kWrite, 1, FaultAction::kErrno, ENOSPC, 1}});
  const Status st = o.spool.ack(3);
  INFO(st.message());
  CHECK(st);
  CHECK_FALSE(o.spool.stats().state_unsaved);
  CHECK(fs::exists(tmp.path() / "reserve"));  // made again once the ack freed a segment
  o = open_ok(cfg);
  CHECK(o.spool.acked_seq() == 3);
}

TEST_CASE("spool faults: a reserve file of another size is remade at open, or given back when none is wanted") {
  TempDir tmp{"/dev/shm"};
  SpoolConfig cfg = small_config(tmp.path());
  cfg.reserve_bytes = 4096;
  { auto o = open_ok(cfg); }
  REQUIRE(fs::file_size(tmp.path() / "reserve") == 4096);
  cfg.reserve_bytes = 1024;
  { auto o = open_ok(cfg); }
  CHECK(fs::file_size(tmp.path() / "reserve") == 1024);
  cfg.reserve_bytes = 0;  // no reserve wanted now: the old one's space goes back to the records
  { auto o = open_ok(cfg); }
  CHECK_FALSE(fs::exists(tmp.path() / "reserve"));
}

TEST_CASE("spool faults: a record that cannot be read is retried, then given up and counted") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  auto o = open_ok(fault_config(tmp.path(), files, false));
  Spool& s = o.spool;
  for (int i = 0; i < 4; ++i) append_ok(s, 40);
  files->arm({Fault{SpoolOp::kRead, 1, FaultAction::kErrno, EIO, 1}});
  CHECK_FALSE(s.next_unacked(0).has_value());  // transient: nothing now ...
  CHECK(s.stats().corrupt_reads == 0);
  CHECK(s.next_unacked(0)->seq == 1);  // ... and there it is
  files->arm({Fault{SpoolOp::kRead, 1, FaultAction::kErrno, EIO, kForever}});
  CHECK_FALSE(s.next_unacked(1).has_value());
  CHECK_FALSE(s.next_unacked(1).has_value());
  CHECK(s.stats().corrupt_reads == 0);
  CHECK_FALSE(s.next_unacked(1).has_value());  // the third failure gives seq 2 up
  CHECK(s.stats().corrupt_reads == 1);
  CHECK(s.stats().lost() == 1);
  CHECK(s.stats().records == 3);
  files->clear();
  CHECK(s.next_unacked(1)->seq == 3);
}

TEST_CASE("spool faults: a hung fsync does not block the spool's caller, and shows") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  cfg.sync_wait = 300ms;
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  for (int i = 0; i < 3; ++i) append_ok(s, 40);
  // A loaded machine may make a healthy sync outlast its wait: those stalls are not the test's.
  for (int i = 0; i < 100 && !s.flush(); ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(s.durable_seq() == 3);
  const std::uint64_t stalls = s.stats().sync_stalls;
  files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kBlock, 0, kForever}});
  append_ok(s, 40);
  const Status st = s.flush();  // returns although the fsync under it does not
  CHECK(st.code() == Errc::kUnavailable);
  CHECK(files->blocked());
  CHECK(s.durable_seq() == 3);  // seq 4 is not durable, so it is not sent yet
  CHECK(s.stats().sync_stalls == stalls + 1);
  // Everything else goes on: appends, reads, acks (whose state save waits for the sync).
  for (int i = 0; i < 5; ++i) append_ok(s, 40);
  CHECK(consecutive(read_all(s), 1, 9));
  CHECK(s.ack(2).code() == Errc::kUnavailable);
  CHECK(s.acked_seq() == 2);
  CHECK(s.flush().code() == Errc::kUnavailable);
  CHECK(s.stats().sync_stalls == stalls + 1);  // one hung sync, one stall: no pile of threads behind it
  std::this_thread::sleep_for(20ms);
  CHECK(s.stats().sync_stalled_ms >= 20);

  files->release();
  Status flushed = s.flush();
  for (int i = 0; i < 3000 && !flushed; ++i) {
    std::this_thread::sleep_for(10ms);
    flushed = s.flush();
  }
  INFO(flushed.message());
  CHECK(flushed);
  CHECK(s.durable_seq() == 9);
  CHECK(s.stats().sync_stalled_ms == 0);
  CHECK_FALSE(s.stats().state_unsaved);
  o = open_ok(cfg);
  CHECK(o.spool.acked_seq() == 2);
  CHECK(consecutive(read_all(o.spool), 3, 9));
}

TEST_CASE("spool faults: a spool whose fsync hangs at open still opens, and syncs later") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  cfg.sync_wait = 300ms;
  {
    auto o = open_ok(cfg);
    for (int i = 0; i < 7; ++i) append_ok(o.spool, 40);
  }
  files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kBlock, 0, kForever}});
  {
    auto o = open_ok(cfg);  // does not wait for the hung sync
    CHECK(files->blocked());
    CHECK(o.spool.durable_seq() < 7);  // what it found is not known to be on disk yet
    CHECK(o.spool.stats().state_unsaved);
    CHECK(consecutive(read_all(o.spool), 1, 7));
    append_ok(o.spool, 40);
    files->release();
    Status flushed = o.spool.flush();
    for (int i = 0; i < 3000 && !flushed; ++i) {
      std::this_thread::sleep_for(10ms);
      flushed = o.spool.flush();
    }
    INFO(flushed.message());
    CHECK(flushed);
    CHECK(o.spool.durable_seq() == 8);
    CHECK_FALSE(o.spool.stats().state_unsaved);
  }
  auto o = open_ok(cfg);
  CHECK(o.spool.durable_seq() == 8);
  CHECK(consecutive(read_all(o.spool), 1, 8));
}

TEST_CASE("spool faults: with no room for a new state file, the state is rewritten in place") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = fault_config(tmp.path(), files, false);
  cfg.max_bytes = 1 << 20;
  cfg.reserve_bytes = 0;  // no reserve to give up
  auto o = open_ok(cfg);
  for (int i = 0; i < 9; ++i) append_ok(o.spool, 40);
  const auto segments = o.spool.stats().segments;
  // state.tmp cannot be created (a full disk, or no inode left), the existing state file is there.
  files->arm({Fault{SpoolOp::kOpen, 1, FaultAction::kErrno, ENOSPC, 1}});
  const Status st = o.spool.ack(6);
  INFO(st.message());
  CHECK(st);
  CHECK_FALSE(o.spool.stats().state_unsaved);
  CHECK(o.spool.stats().segments < segments);  // saved, so the acked segments went
  CHECK(files->injected() == 1);
  o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(o.spool.acked_seq() == 6);
  CHECK(consecutive(read_all(o.spool), 7, 9));
}
