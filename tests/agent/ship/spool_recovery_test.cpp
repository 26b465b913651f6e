// Spool recovery: every kind of damage a crash or a rotting disk leaves (torn tails at every
// byte, flipped bytes, garbage, empty segments, lost or corrupt state, a bad middle segment,
// rot after open) and real SIGKILLs during appends. open() must keep every good record before
// the damage, warn, and let appends continue at the right seq.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "agent/ship/spool.hpp"
#include "tests/agent/ship/spool_test_util.hpp"

namespace {

using namespace spool_test;

// 10 records of 60 bytes (40 payload) with 4 per 256-byte segment: seq 1-4, 5-8, 9-10.
constexpr std::size_t kPayload = 40;
constexpr std::size_t kRec = 60;

void build_ten(const SpoolConfig& cfg) {
  auto o = open_ok(cfg);
  for (int i = 0; i < 10; ++i) append_ok(o.spool, kPayload);
  REQUIRE(segment_files(cfg.dir).size() == 3);
}

fs::path seg(const fs::path& dir, std::uint64_t first) {
  char name[32];
  std::snprintf(name, sizeof name, "seg-%020llu.vsp", static_cast<unsigned long long>(first));
  return dir / name;
}

bool any_warning_mentions(const std::vector<std::string>& warnings, const std::string& what) {
  for (const auto& w : warnings) {
    if (w.find(what) != std::string::npos) return true;
  }
  return false;
}

// After damage: records 1..kept intact, appends continue at kept + 1, and a second open is clean.
void expect_recovered(const SpoolConfig& cfg, std::uint64_t kept, bool warned) {
  {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty() != warned);
    Spool& s = o.spool;
    CHECK(consecutive(read_all(s), 1, kept));
    CHECK(s.next_seq() == kept + 1);
    CHECK(s.stats().corrupt_reads == 0);
    append_ok(s, kPayload);
  }
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(consecutive(read_all(o.spool), 1, kept + 1));
}

void flip(const fs::path& p, std::size_t offset) {
  auto bytes = read_bytes(p);
  REQUIRE(offset < bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x5a);
  write_bytes(p, bytes);
}

// Ten records spooled, and the files as they were then: each case damages the last segment
// (seq 9 and 10) in turn and restores the pristine files before the next.
struct TenRecords {
  TenRecords() {
    build_ten(cfg);
    pristine = snapshot(tmp.path());
  }
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  Snapshot pristine;
  const fs::path last = seg(tmp.path(), 9);
};

}  // namespace

TEST_CASE_FIXTURE(TenRecords, "spool recovery: the last segment torn at every byte of its records") {
  REQUIRE(fs::file_size(last) == 2 * kRec);
  for (std::size_t cut = 0; cut < 2 * kRec; ++cut) {
    CAPTURE(cut);
    restore(tmp.path(), pristine);
    fs::resize_file(last, cut);
    // A cut exactly between records leaves a clean, shorter file: nothing to warn about.
    expect_recovered(cfg, 8 + cut / kRec, cut % kRec != 0 || cut == 0);
  }
}

TEST_CASE_FIXTURE(TenRecords, "spool recovery: a flipped byte in the header or payload of the last records") {
  for (std::size_t pos = 0; pos < 2 * kRec; ++pos) {
    CAPTURE(pos);
    restore(tmp.path(), pristine);
    flip(last, pos);
    expect_recovered(cfg, pos < kRec ? 8 : 9, true);
  }
}

TEST_CASE_FIXTURE(TenRecords, "spool recovery: garbage after the last record") {
  const std::vector<char> record10(pristine.at(last.filename().string()).begin() + kRec,
                                   pristine.at(last.filename().string()).end());
  std::vector<std::vector<char>> tails = {
      std::vector<char>(1, '\xab'),
      std::vector<char>(19, '\xab'),
      std::vector<char>(25, '\xab'),
      std::vector<char>(4096, '\0'),  // what a file system can show after power loss
      record10,                       // a valid record, but a duplicate seq
      std::vector<char>(record10.begin(), record10.begin() + 20),  // a header with no payload
  };
  for (std::size_t i = 0; i < tails.size(); ++i) {
    CAPTURE(i);
    restore(tmp.path(), pristine);
    auto bytes = read_bytes(last);
    bytes.insert(bytes.end(), tails[i].begin(), tails[i].end());
    write_bytes(last, bytes);
    expect_recovered(cfg, 10, true);
  }
}

TEST_CASE("spool recovery: zero-length segments") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  SUBCASE("alone") {
    write_bytes(seg(tmp.path(), 1), {});
    auto o = open_ok(cfg);
    CHECK(any_warning_mentions(o.warnings, "zero-length"));
    CHECK(o.spool.next_seq() == 1);
    append_ok(o.spool, kPayload);
  }
  SUBCASE("after good segments") {
    build_ten(cfg);
    write_bytes(seg(tmp.path(), 11), {});
    {
      auto o = open_ok(cfg);
      CHECK(any_warning_mentions(o.warnings, "zero-length"));
    }
    write_bytes(seg(tmp.path(), 99), {});
    expect_recovered(cfg, 10, true);
  }
}

TEST_CASE("spool recovery: a missing or corrupt state file") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  build_ten(cfg);
  {
    auto o = open_ok(cfg);
    REQUIRE(o.spool.ack(3));  // no segment is wholly acked yet
  }
  const Snapshot pristine = snapshot(tmp.path());
  const fs::path state = tmp.path() / "state";
  const auto good = pristine.at("state");
  REQUIRE(good.size() == 44);
  std::vector<std::vector<char>> variants = {
      {},
      std::vector<char>(good.begin(), good.begin() + 10),
      std::vector<char>(44, '\x7f'),
  };
  for (std::size_t pos = 0; pos < good.size(); pos += 5) {
    auto v = good;
    v[pos] = static_cast<char>(v[pos] ^ 1);
    variants.push_back(v);
  }
  auto longer = good;
  longer.push_back('\0');
  variants.push_back(longer);

  for (std::size_t i = 0; i <= variants.size(); ++i) {
    CAPTURE(i);
    restore(tmp.path(), pristine);
    if (i == variants.size()) {
      fs::remove(state);
    } else {
      write_bytes(state, variants[i]);
    }
    auto o = open_ok(cfg);
    CHECK(any_warning_mentions(o.warnings, state.string()));
    Spool& s = o.spool;
    CHECK(s.acked_seq() == 0);  // unknown acks mean resending: at-least-once
    CHECK(consecutive(read_all(s), 1, 10));
    CHECK(s.next_seq() == 11);
    append_ok(s, kPayload);
  }
}

TEST_CASE("spool recovery: a corrupt middle segment is cut and counted, later segments still read") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  build_ten(cfg);
  const fs::path middle = seg(tmp.path(), 5);
  flip(middle, kRec + 30);  // the payload of seq 6
  auto o = open_ok(cfg);
  REQUIRE(o.warnings.size() == 1);
  CHECK(o.warnings[0].find(middle.string()) != std::string::npos);
  CHECK(o.warnings[0].find("offset 60") != std::string::npos);
  Spool& s = o.spool;
  const auto st = s.stats();
  CHECK(st.truncations == 1);
  CHECK(st.truncated_bytes == 3 * kRec);
  CHECK(st.lost_records == 3);
  CHECK(st.records == 7);
  CHECK(fs::file_size(middle) == kRec);
  CHECK(read_all(s) == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 9, 10});
  CHECK(s.next_seq() == 11);
  append_ok(s, kPayload);
  CHECK(s.next_unacked(10)->seq == 11);
}

TEST_CASE("spool recovery: records cut from the end are counted as lost, by the open that cuts them") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  build_ten(cfg);  // seq 1-4, 5-8, 9-10
  {
    auto o = open_ok(cfg);
    REQUIRE(o.spool.ack(2));  // the state file says next_seq 11
  }
  // A CRC failure in seq 9 cuts 9 and 10, the newest records: no later segment, so no gap.
  flip(seg(tmp.path(), 9), 30);
  {
    auto o = open_ok(cfg);
    const auto st = o.spool.stats();
    CHECK(st.truncations == 1);
    CHECK(st.lost_records == 2);
    CHECK(st.lost() == 2);  // what the shipper reports as self.spool_lost
    CHECK(consecutive(read_all(o.spool), 3, 8));
  }
  // A reopen (a reload) finds nothing new: the same loss is not counted again.
  auto o = open_ok(cfg);
  CHECK(o.spool.stats().lost_records == 0);
  // And a cut in the middle of the newest segment: seq 7 rots, 7 and 8 go.
  flip(seg(tmp.path(), 5), 2 * kRec + 30);
  o = open_ok(cfg);
  CHECK(o.spool.stats().lost_records == 2);
  CHECK(consecutive(read_all(o.spool), 3, 6));
}

TEST_CASE("spool recovery: a gap is counted by the open that made it, not by every later open") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  build_ten(cfg);
  flip(seg(tmp.path(), 5), kRec + 30);  // seq 6: cuts 6..8, 9 and 10 stay
  {
    auto o = open_ok(cfg);
    CHECK(o.spool.stats().lost_records == 3);
  }
  auto o = open_ok(cfg);
  CHECK(o.spool.stats().lost_records == 0);
  CHECK(read_all(o.spool) == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 9, 10});
}

TEST_CASE("spool recovery: a record given up on read and then cut by the next open is counted once") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  vantage::agent::ship::SpoolBadSeqs bad;
  {
    auto o = open_ok(cfg);
    for (int i = 0; i < 3; ++i) append_ok(o.spool, kPayload);
    REQUIRE(o.spool.ack(1));  // the state file says next_seq 4
    flip(seg(tmp.path(), 1), kRec + 30);  // seq 2 rots
    CHECK(o.spool.next_unacked(1)->seq == 3);
    CHECK(o.spool.stats().corrupt_reads == 1);
    bad = o.spool.bad_seqs();
  }
  // A reload: the open cuts 2 and 3 (2 and 3 lost to damage), but 2 was counted by the read.
  auto o = open_ok(cfg);
  CHECK(o.spool.stats().lost_records == 2);
  o.spool.adopt_bad_seqs(bad);
  CHECK(o.spool.stats().lost_records == 1);
}

TEST_CASE("spool recovery: a record that rots after open is skipped and counted on read") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  auto o = open_ok(cfg);
  Spool& s = o.spool;
  for (int i = 0; i < 10; ++i) append_ok(s, kPayload);
  flip(seg(tmp.path(), 1), 2 * kRec + 25);  // the payload of seq 3
  CHECK(read_all(s) == std::vector<std::uint64_t>{1, 2, 4, 5, 6, 7, 8, 9, 10});
  CHECK(s.stats().corrupt_reads == 1);
  CHECK(s.stats().records == 9);
  CHECK(s.next_unacked(2)->seq == 4);
  CHECK(s.stats().corrupt_reads == 1);  // a known-bad record is not read (or counted) twice
  REQUIRE(s.ack(10));
  CHECK(s.stats().records == 0);
  CHECK(s.stats().live_bytes == 0);
}

TEST_CASE("spool recovery: SIGKILL during appends leaves 1..k intact and appends continue at k+1") {
  TempDir tmp;
  SpoolConfig cfg = small_config(tmp.path());
  cfg.segment_bytes = 16 * 1024;
  cfg.max_bytes = 1ull << 30;
  std::mt19937 rng(20240611);
  std::uint64_t before = 0;
  for (int round = 0; round < 6; ++round) {
    CAPTURE(round);
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // No doctest in the child: report through the exit status only.
      ::close(ready[0]);
      std::vector<std::string> warnings;
      auto o = Spool::open(cfg, warnings);
      if (!o) ::_exit(2);
      for (int i = 0; i < 20000; ++i) {
        const std::uint64_t seq = o->next_seq();
        if (!o->append(seq, payload_for(seq, 1 + seq * 37 % 700))) ::_exit(3);
        if (i == 0 && ::write(ready[1], "x", 1) != 1) ::_exit(4);
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    ::close(ready[0]);
    ::usleep(static_cast<useconds_t>(std::uniform_int_distribution<int>(0, 20000)(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK((WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0)));

    auto o = open_ok(cfg);
    Spool& s = o.spool;
    const std::uint64_t k = s.next_seq() - 1;
    MESSAGE("round " << round << ": " << k << " records, " << o.warnings.size() << " warnings");
    CHECK(k >= before + 2);  // our append from the last round and the child's first
    CHECK(consecutive(read_all(s), 1, k));
    CHECK(s.stats().records == k);
    CHECK(s.durable_seq() == k);  // open() syncs what the dead process left in the page cache
    append_ok(s, 100);
    before = k + 1;
  }
}
