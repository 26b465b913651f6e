// The spool on a slow but healthy disk (every fsync takes longer than sync_wait, as on a busy HDD,
// an SD card or NFS) and on a sync that outlasts its wait and then fails: a sync's result counts
// when it comes, on a later call, so records still become durable, the state is still saved and
// segments deleted, and an error is never hidden by a later sync that returns 0.
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
using vantage::platform::Errc;
using vantage::platform::Status;

constexpr auto kSlowSync = 700ms;  // each fsync, against the production sync_wait of 500 ms

SpoolConfig slow_config(const fs::path& dir, std::shared_ptr<FaultySpoolFiles> files) {
  SpoolConfig c = small_config(dir);
  c.segment_bytes = 200;
  c.reserve_bytes = 4096;
  c.sync_wait = SpoolConfig{}.sync_wait;
  REQUIRE(c.sync_wait == 500ms);
  c.fsync_interval = 1000ms;
  c.files = std::move(files);
  return c;
}

Fault slow_syncs() { return Fault{SpoolOp::kSync, 1, FaultAction::kDelay, 0, kForever, kSlowSync}; }

// Calls flush() as the shipper's flush timer would (at 100 ms here, to keep the test short) until
// done() holds; false after a generous limit.
template <typename Done>
bool flush_until(Spool& s, Done done) {
  for (int i = 0; i < 600 && !done(); ++i) {
    (void)s.flush();
    std::this_thread::sleep_for(100ms);
  }
  return done();
}

}  // namespace

TEST_CASE("slow disk: every fsync outlasting sync_wait still makes records durable, saves the state and deletes segments") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  const SpoolConfig cfg = slow_config(tmp.path(), files);
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  files->arm({slow_syncs()});
  for (int i = 0; i < 9; ++i) append_ok(s, 40);
  REQUIRE(s.stats().segments >= 3);
  CHECK(flush_until(s, [&] { return s.durable_seq() == 9; }));
  CHECK(s.stats().sync_stalls > 0);  // the syncs did outlast their wait
  CHECK(consecutive(read_all(s), 1, 9));

  (void)s.ack(9);
  CHECK(s.acked_seq() == 9);
  CHECK(flush_until(s, [&] { return !s.stats().state_unsaved && s.stats().segments == 0; }));
  CHECK(segment_files(cfg.dir).empty());
  CHECK(s.stats().lost() == 0);

  files->clear();
  o = open_ok(cfg);
  CHECK(o.spool.acked_seq() == 9);
  CHECK(o.spool.next_seq() == 10);
  CHECK(read_all(o.spool).empty());
}

TEST_CASE("slow disk: a new spool opens although every fsync outlasts sync_wait") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  const SpoolConfig cfg = slow_config(tmp.path() / "spool", files);
  files->arm({slow_syncs()});
  // The incarnation must be durable before anything else: open() waits for its syncs.
  auto o = open_ok(cfg);
  CHECK(fs::file_size(cfg.dir / "incarnation") == 28);
  append_ok(o.spool, 40);
  CHECK(flush_until(o.spool, [&] { return o.spool.durable_seq() == 1; }));
  files->clear();
  const auto incarnation = o.spool.incarnation();
  o = open_ok(cfg);
  CHECK(o.spool.incarnation() == incarnation);
  CHECK(consecutive(read_all(o.spool), 1, 1));
}

TEST_CASE("slow disk: a sync that outlasts its wait and then fails is reported, and its records are not sent") {
  TempDir tmp{"/dev/shm"};
  auto files = std::make_shared<FaultySpoolFiles>();
  SpoolConfig cfg = slow_config(tmp.path(), files);
  cfg.segment_bytes = 1 << 16;
  cfg.fsync_interval = std::chrono::hours(1);  // only flush() syncs
  cfg.sync_wait = 200ms;
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  for (int i = 0; i < 3; ++i) append_ok(s, 40);
  REQUIRE(flush_until(s, [&] { return s.durable_seq() == 3; }));
  append_ok(s, 40);
  append_ok(s, 40);
  // The fdatasync covering 4 and 5 takes 700 ms and then fails; the kernel may have dropped
  // their write-back, and the retry (on a duplicate of the same file) would return 0.
  files->arm({Fault{SpoolOp::kSync, 1, FaultAction::kDelay, EIO, 1, kSlowSync}});
  CHECK(s.flush().code() == Errc::kUnavailable);
  CHECK(s.durable_seq() == 3);
  std::this_thread::sleep_for(kSlowSync + 100ms);
  const Status st = s.flush();
  INFO(st.message());
  CHECK_FALSE(st);
  CHECK(st.code() == Errc::kIo);  // the failure is reported when it is found
  CHECK(s.stats().sync_lost == 2);
  CHECK(s.stats().lost() == 2);
  CHECK(s.stats().records == 3);
  const Status again = s.flush();
  INFO(again.message());
  CHECK(again);
  CHECK_FALSE(s.next_unacked(3).has_value());  // 4 and 5 are never sent as if durable
  append_ok(s, 40);  // in a new segment: the failed one takes no more
  REQUIRE(flush_until(s, [&] { return s.durable_seq() >= 6; }));
  const std::optional<vantage::agent::ship::SpoolRecord> next = s.next_unacked(3);
  REQUIRE(next.has_value());
  CHECK(next->seq == 6);
  CHECK(s.stats().segments == 2);
}
