// The spool's incarnation id: stable while the spool directory lives, new whenever the seq space
// it names cannot be trusted to continue (a new directory, a missing or corrupt incarnation or
// state file), and never all zero.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/ship/spool.hpp"
#include "tests/agent/ship/spool_test_util.hpp"

namespace {

using namespace spool_test;
using vantage::agent::ship::SpoolIncarnation;
using vantage::agent::ship::to_hex;

bool zero(const SpoolIncarnation& id) {
  return std::all_of(id.begin(), id.end(), [](std::uint8_t b) { return b == 0; });
}

bool mentions(const std::vector<std::string>& warnings, const std::string& what) {
  return std::any_of(warnings.begin(), warnings.end(),
                     [&](const std::string& w) { return w.find(what) != std::string::npos; });
}

}  // namespace

TEST_CASE("spool incarnation: to_hex writes 32 lowercase digits, byte 0 first") {
  SpoolIncarnation id{};
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(i * 17);
  CHECK(to_hex(id) == "00112233445566778899aabbccddeeff");
  CHECK(to_hex(SpoolIncarnation{}) == std::string(32, '0'));
}

TEST_CASE("spool incarnation: stable across reopen, appends and acks") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty());  // a fresh directory is not a problem
    first = o.spool.incarnation();
    CHECK_FALSE(zero(first));
    CHECK(fs::file_size(tmp.path() / "incarnation") == 28);
    for (int i = 0; i < 12; ++i) append_ok(o.spool, 40);
    REQUIRE(o.spool.ack(5));
  }
  for (int round = 0; round < 3; ++round) {
    auto o = open_ok(cfg);
    CHECK(o.warnings.empty());
    CHECK(o.spool.incarnation() == first);
    append_ok(o.spool, 40);
    REQUIRE(o.spool.ack(o.spool.next_seq() - 1));
  }
  CHECK_FALSE(fs::exists(tmp.path() / "incarnation.tmp"));
}

TEST_CASE("spool incarnation: two new spools never share one") {
  TempDir a;
  TempDir b;
  const auto oa = open_ok(small_config(a.path()));
  const auto ob = open_ok(small_config(b.path()));
  CHECK(oa.spool.incarnation() != ob.spool.incarnation());
}

TEST_CASE("spool incarnation: new after the spool directory is deleted, and seqs start again") {
  TempDir tmp;
  const fs::path dir = tmp.path() / "spool";
  const SpoolConfig cfg = small_config(dir);
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    first = o.spool.incarnation();
    for (int i = 0; i < 5; ++i) append_ok(o.spool, 30);
  }
  fs::remove_all(dir);
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(o.spool.next_seq() == 1);
  CHECK_FALSE(zero(o.spool.incarnation()));
  CHECK(o.spool.incarnation() != first);
}

TEST_CASE("spool incarnation: a corrupt file gives a new one with a warning, records kept") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  const fs::path file = tmp.path() / "incarnation";
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    first = o.spool.incarnation();
    for (int i = 0; i < 6; ++i) append_ok(o.spool, 30);
  }
  const std::vector<char> pristine = read_bytes(file);
  REQUIRE(pristine.size() == 28);

  struct Damage {
    const char* name;
    std::vector<char> bytes;
  };
  std::vector<Damage> damages;
  for (const std::size_t at : {0u, 5u, 8u, 20u, 25u}) {  // magic, version, id, CRC
    std::vector<char> b = pristine;
    b[at] = static_cast<char>(b[at] ^ 0x40);
    damages.push_back({"flipped byte", b});
  }
  damages.push_back({"truncated", std::vector<char>(pristine.begin(), pristine.begin() + 20)});
  damages.push_back({"empty", {}});
  std::vector<char> longer = pristine;
  longer.push_back('x');
  damages.push_back({"trailing byte", longer});

  SpoolIncarnation previous = first;
  for (const Damage& d : damages) {
    CAPTURE(d.name);
    write_bytes(file, d.bytes);
    auto o = open_ok(cfg);
    CHECK(mentions(o.warnings, "corrupt"));
    CHECK_FALSE(zero(o.spool.incarnation()));
    CHECK(o.spool.incarnation() != previous);
    CHECK(o.spool.incarnation() != first);
    CHECK(consecutive(read_all(o.spool), 1, 6));  // the records themselves are untouched
    CHECK(o.spool.next_seq() == 7);
    previous = o.spool.incarnation();
    CHECK(read_bytes(file).size() == 28);  // rewritten whole
  }
  // The replacement is as stable as the first one.
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(o.spool.incarnation() == previous);
}

TEST_CASE("spool incarnation: a spool from before incarnations gets one at open, keeping its records") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  {
    auto o = open_ok(cfg);
    for (int i = 0; i < 8; ++i) append_ok(o.spool, 30);
    REQUIRE(o.spool.ack(3));
  }
  fs::remove(tmp.path() / "incarnation");  // what the previous version left: segments and state
  SpoolIncarnation made{};
  {
    auto o = open_ok(cfg);
    CHECK(mentions(o.warnings, "missing"));
    made = o.spool.incarnation();
    CHECK_FALSE(zero(made));
    CHECK(o.spool.acked_seq() == 3);
    CHECK(consecutive(read_all(o.spool), 4, 8));
    CHECK(o.spool.next_seq() == 9);
  }
  auto o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(o.spool.incarnation() == made);
}

TEST_CASE("spool incarnation: a missing or corrupt state file also gives a new one, since seqs may repeat") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    first = o.spool.incarnation();
    for (int i = 0; i < 4; ++i) append_ok(o.spool, 30);
    REQUIRE(o.spool.ack(4));  // every segment goes: only the state file remembers next_seq
  }
  SUBCASE("state file missing") { fs::remove(tmp.path() / "state"); }
  SUBCASE("state file corrupt") {
    std::vector<char> b = read_bytes(tmp.path() / "state");
    b[10] = static_cast<char>(b[10] ^ 1);
    write_bytes(tmp.path() / "state", b);
  }
  auto o = open_ok(cfg);
  CHECK(o.spool.next_seq() == 1);  // the seq space went back ...
  CHECK(o.spool.incarnation() != first);  // ... so it is a new one
  CHECK(mentions(o.warnings, "replaced"));
  auto again = open_ok(cfg);
  CHECK(again.spool.incarnation() == o.spool.incarnation());
}

namespace {

// Flips one byte of a file.
void flip_byte(const fs::path& p, std::size_t offset) {
  std::vector<char> bytes = read_bytes(p);
  REQUIRE(offset < bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x5a);
  write_bytes(p, bytes);
}

}  // namespace

TEST_CASE("spool incarnation: damage cutting the newest records under a valid state gives a new one") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());  // 50-byte records, 5 per segment
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    first = o.spool.incarnation();
    for (int i = 0; i < 4; ++i) append_ok(o.spool, 30);
    REQUIRE(o.spool.ack(2));  // the state file says next_seq 5
    for (int i = 0; i < 4; ++i) append_ok(o.spool, 30);  // 5..8, sent and stored by the collector
    REQUIRE(o.spool.stats().segments == 2);
  }
  // Rot in seq 6 (the newest segment's first record) cuts 6..8: next_seq goes back to 6. Under
  // the old incarnation the collector would ack the new 6..8 as duplicates of the old ones.
  flip_byte(tmp.path() / "seg-00000000000000000006.vsp", 30);
  auto o = open_ok(cfg);
  CHECK(o.spool.next_seq() == 6);
  CHECK(o.spool.incarnation() != first);
  CHECK_FALSE(zero(o.spool.incarnation()));
  CHECK(mentions(o.warnings, "cut from the end"));
  CHECK(consecutive(read_all(o.spool), 3, 5));
  const SpoolIncarnation second = o.spool.incarnation();
  append_ok(o.spool, 30);
  o = open_ok(cfg);
  CHECK(o.warnings.empty());
  CHECK(o.spool.incarnation() == second);  // stable again once repaired
}

TEST_CASE("spool incarnation: a torn tail too short to hold a record keeps it") {
  TempDir tmp;
  const SpoolConfig cfg = small_config(tmp.path());
  SpoolIncarnation first{};
  {
    auto o = open_ok(cfg);
    first = o.spool.incarnation();
    for (int i = 0; i < 3; ++i) append_ok(o.spool, 30);
  }
  const fs::path segment = tmp.path() / "seg-00000000000000000001.vsp";
  std::vector<char> bytes = read_bytes(segment);
  bytes.insert(bytes.end(), {'V', 'S', 'R', '1', '\x40', '\0', '\0'});  // half a header: no record lost
  write_bytes(segment, bytes);
  auto o = open_ok(cfg);
  CHECK_FALSE(o.warnings.empty());
  CHECK(o.spool.incarnation() == first);
  CHECK(o.spool.next_seq() == 4);
  CHECK(o.spool.stats().lost_records == 0);
}
