// Spool behaviour on healthy disks: the append/ack/resend cycle across segments, next_seq across
// restarts, the size bound and its drop count, refused appends, failed writes, the fsync policies,
// open errors.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "agent/ship/spool.hpp"
#include "tests/agent/ship/spool_test_util.hpp"

namespace {

using namespace spool_test;
using vantage::agent::ship::kSpoolRecordHeaderBytes;
using vantage::platform::Errc;

std::size_t size_for(std::uint64_t seq) { return 20 + seq % 37; }

}  // namespace

TEST_CASE("spool: append, next_unacked and ack across several segments") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  Spool& s = o.spool;
  CHECK(s.next_seq() == 1);
  CHECK_FALSE(s.next_unacked(0).has_value());

  for (int i = 0; i < 30; ++i) append_ok(s, size_for(s.next_seq()));
  const auto st = s.stats();
  CHECK(st.records == 30);
  CHECK(st.segments >= 5);
  CHECK(st.segments == segment_files(tmp.path()).size());
  CHECK(st.oldest_seq == 1);
  CHECK(st.newest_seq == 30);
  CHECK(st.live_bytes == st.disk_bytes);
  CHECK(consecutive(read_all(s), 1, 30));
  CHECK(consecutive(read_all(s, 17), 18, 30));

  // A partial ack removes only segments whose every record is acked.
  REQUIRE(s.ack(12));
  CHECK(s.acked_seq() == 12);
  CHECK(consecutive(read_all(s), 13, 30));
  const auto files = segment_files(tmp.path());
  CHECK(files.size() == s.stats().segments);
  const std::uint64_t first_kept = std::stoull(files.front().filename().string().substr(4, 20));
  CHECK(first_kept <= 13);
  CHECK(s.stats().records == 18);
  CHECK(s.stats().disk_bytes > s.stats().live_bytes);

  // Acks are idempotent and clamped to what was appended.
  REQUIRE(s.ack(5));
  CHECK(s.acked_seq() == 12);
  REQUIRE(s.ack(1000));
  CHECK(s.acked_seq() == 30);
  CHECK(segment_files(tmp.path()).empty());
  CHECK(s.stats().records == 0);
  CHECK(s.stats().live_bytes == 0);
  CHECK(s.stats().oldest_seq == 0);
  CHECK_FALSE(s.next_unacked(0).has_value());

  append_ok(s, 10);
  CHECK(s.next_unacked(30)->seq == 31);
}

TEST_CASE("spool: next_seq survives reopen, also after every record was acked and deleted") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  {
    auto o = open_ok(cfg);
    for (int i = 0; i < 9; ++i) append_ok(o.spool, size_for(o.spool.next_seq()));
    REQUIRE(o.spool.ack(4));
  }
  {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty());
    Spool& s = o.spool;
    CHECK(s.next_seq() == 10);
    CHECK(s.acked_seq() == 4);
    CHECK(consecutive(read_all(s), 5, 9));
    append_ok(s, 33);
    REQUIRE(s.ack(10));
    CHECK(segment_files(tmp.path()).empty());
  }
  for (std::uint64_t expect = 11; expect < 14; ++expect) {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty());
    CHECK(o.spool.next_seq() == expect);
    CHECK(o.spool.stats().records == 0);
    append_ok(o.spool, 5);
    REQUIRE(o.spool.ack(expect));
  }
}

TEST_CASE("spool: the oldest records are dropped to stay within max_bytes and counted exactly") {
  TempDir tmp;
  SpoolConfig cfg = small_config(tmp.path());
  constexpr std::uint64_t kRec = kSpoolRecordHeaderBytes + 30;
  cfg.max_bytes = 10 * kRec;
  cfg.segment_bytes = 3 * kRec;
  {
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    for (int i = 0; i < 25; ++i) {
      append_ok(s, 30);
      CHECK(s.stats().live_bytes <= cfg.max_bytes);
    }
    const auto st = s.stats();
    CHECK(st.dropped_total == 15);
    CHECK(st.records == 10);
    CHECK(st.oldest_seq == 16);
    CHECK(st.live_bytes == 10 * kRec);
    // Segments go once wholly dropped; the partly dropped one stays, so disk exceeds live by < 1 segment.
    CHECK(st.disk_bytes < st.live_bytes + cfg.segment_bytes);
    CHECK(consecutive(read_all(s), 16, 25));
    // The resend cursor can point at dropped seqs: the next live one comes back.
    CHECK(s.next_unacked(3)->seq == 16);
  }
  {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty());
    Spool& s = o.spool;
    CHECK(s.stats().dropped_total == 15);
    CHECK(s.stats().records == 10);
    CHECK(consecutive(read_all(s), 16, 25));
    // Acked records are not "dropped": only unacked ones count.
    REQUIRE(s.ack(18));
    for (int i = 0; i < 5; ++i) append_ok(s, 30);
    CHECK(s.stats().dropped_total == 17);
    CHECK(consecutive(read_all(s), 21, 30));
  }
  {
    // Mixed sizes: whatever was dropped is exactly the seqs missing between acked and next.
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    for (int i = 0; i < 40; ++i) {
      append_ok(s, size_for(s.next_seq()) * 2);
      const auto st = s.stats();
      CHECK(st.live_bytes <= cfg.max_bytes);
      // 17 dropped and everything through 20 gone before this block.
      CHECK(st.dropped_total - 17 == (s.next_seq() - 1) - st.records - 20);
    }
    const auto st = s.stats();
    CHECK(consecutive(read_all(s), st.oldest_seq, 70));
  }
  {
    // A smaller bound after a restart applies at open.
    cfg.max_bytes = 4 * kRec + 200;
    auto o = open_ok(cfg);
    const auto st = o.spool.stats();
    CHECK(st.live_bytes <= cfg.max_bytes);
    CHECK(st.dropped_total == 67 - st.records);
    CHECK_FALSE(o.warnings.empty());
  }
}

TEST_CASE("spool: refuses a wrong seq and oversized records without changing anything") {
  TempDir tmp;
  SpoolConfig cfg = small_config(tmp.path());
  cfg.max_record_bytes = 100;
  cfg.max_bytes = 110;
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  append_ok(s, 10);

  auto e = s.append(5, payload_for(5, 10));
  CHECK(e.code() == Errc::kInvalid);
  CHECK(e.message().find("expected 2") != std::string::npos);

  e = s.append(2, payload_for(2, 101));
  CHECK(e.code() == Errc::kInvalid);
  CHECK(e.message().find("exceeds max_record_bytes") != std::string::npos);
  // Fits max_record_bytes but not max_bytes with its header.
  e = s.append(2, payload_for(2, 100));
  CHECK(e.code() == Errc::kInvalid);
  CHECK(e.message().find("exceeds max_record_bytes") != std::string::npos);
  CHECK(s.next_seq() == 2);
  CHECK(s.stats().dropped_total == 0);
  CHECK(consecutive(read_all(s), 1, 1));

  append_ok(s, 90);  // fits only by dropping record 1
  CHECK(s.stats().dropped_total == 1);
  CHECK(consecutive(read_all(s), 2, 2));
  append_ok(s, 0);  // an empty payload is a record too
  CHECK(s.next_unacked(2)->payload.empty());
}

TEST_CASE("spool: fsync on every record, or on the interval and flush") {
  TempDir tmp;
  SpoolConfig cfg = small_config(tmp.path());
  SUBCASE("every record") {
    cfg.fsync = SpoolConfig::Fsync::kEveryRecord;
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    const auto before = s.stats().fsyncs;
    for (int i = 0; i < 5; ++i) {
      append_ok(s, 40);
      CHECK(s.durable_seq() == s.next_seq() - 1);
    }
    CHECK(s.stats().fsyncs >= before + 5);
    const auto after = s.stats().fsyncs;
    REQUIRE(s.flush());
    CHECK(s.stats().fsyncs == after);
  }
  SUBCASE("interval") {
    cfg.fsync = SpoolConfig::Fsync::kInterval;
    cfg.fsync_interval = std::chrono::hours(1);
    cfg.segment_bytes = 1 << 20;
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    const auto before = s.stats().fsyncs;
    for (int i = 0; i < 5; ++i) append_ok(s, 40);
    // The first append created a segment, so only the directory is still unsynced: no data syncs yet.
    CHECK(s.stats().fsyncs == before);
    CHECK(s.durable_seq() == 0);
    REQUIRE(s.flush());
    CHECK(s.stats().fsyncs == before + 2);  // segment data and the directory entry
    CHECK(s.durable_seq() == 5);
    REQUIRE(s.flush());
    CHECK(s.stats().fsyncs == before + 2);
  }
  SUBCASE("interval elapsed") {
    cfg.fsync = SpoolConfig::Fsync::kInterval;
    cfg.fsync_interval = std::chrono::milliseconds(0);
    cfg.segment_bytes = 1 << 20;
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    const auto before = s.stats().fsyncs;
    for (int i = 0; i < 5; ++i) append_ok(s, 40);
    CHECK(s.stats().fsyncs >= before + 4);  // each append syncs what the previous one wrote
    CHECK(s.durable_seq() == 4);
  }
}

TEST_CASE("spool: open fails with the path when the directory cannot be used") {
  TempDir tmp;
  const fs::path file = tmp.path() / "not-a-dir";
  write_bytes(file, {'x'});
  SpoolConfig cfg = small_config(file / "spool");
  std::vector<std::string> warnings;
  auto o = Spool::open(cfg, warnings);
  CHECK_FALSE(o.has_value());
  CHECK_FALSE(o.status());
  CHECK(o.error().find(file.string()) != std::string::npos);

  cfg = small_config(tmp.path() / "bad");
  cfg.segment_bytes = 0;
  o = Spool::open(cfg, warnings);
  CHECK(o.code() == Errc::kInvalid);

  if (::geteuid() != 0) {  // root ignores permissions
    const fs::path ro = tmp.path() / "ro";
    fs::create_directory(ro);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
    o = Spool::open(small_config(ro), warnings);
    CHECK_FALSE(o.has_value());
    CHECK(o.code() == Errc::kIo);
    CHECK(o.error().find(std::strerror(EACCES)) != std::string::npos);
    CHECK(o.error().find(ro.string()) != std::string::npos);
    fs::permissions(ro, fs::perms::owner_all);
  }
}

TEST_CASE("spool: a write that fails part-way leaves no partial record behind") {
  TempDir tmp;
  SpoolConfig cfg = small_config(tmp.path());
  cfg.segment_bytes = 1 << 20;
  {
    auto o = open_ok(cfg);
    Spool& s = o.spool;
    for (int i = 0; i < 3; ++i) append_ok(s, 40);  // 180 bytes
    // RLIMIT_FSIZE makes the kernel write the first 20 bytes of the next record and then fail,
    // as a full disk would.
    ::rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    ::rlimit small = old;
    small.rlim_cur = 200;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const auto e = s.append(4, payload_for(4, 40));
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old) == 0);
    ::signal(SIGXFSZ, old_handler);
    CHECK(e.code() == Errc::kExhausted);
    CHECK(e.message().find(std::strerror(EFBIG)) != std::string::npos);
    CHECK(e.message().find("seg-00000000000000000001.vsp") != std::string::npos);
    CHECK(s.next_seq() == 4);
    CHECK(fs::file_size(segment_files(tmp.path()).front()) == 180);
    append_ok(s, 40);
    CHECK(consecutive(read_all(s), 1, 4));
  }
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(consecutive(read_all(o.spool), 1, 4));
}
