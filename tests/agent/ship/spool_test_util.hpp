// Shared fixtures for the spool tests: a temp directory per test, deterministic payloads, and
// raw access to the files the spool writes.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "agent/ship/spool.hpp"
#include "platform/result.hpp"

namespace spool_test {

namespace fs = std::filesystem;
using vantage::agent::ship::Spool;
using vantage::agent::ship::SpoolConfig;

class TempDir {
 public:
  // Under parent when it is a directory, else under the system's temporary directory.
  explicit TempDir(const fs::path& parent = {}) {
    std::error_code ec;
    const fs::path base =
        !parent.empty() && fs::is_directory(parent, ec) ? parent : fs::temp_directory_path();
    std::string tmpl = (base / "vantage-spool-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

inline std::vector<std::byte> payload_for(std::uint64_t seq, std::size_t size) {
  std::vector<std::byte> p(size);
  for (std::size_t i = 0; i < size; ++i) p[i] = static_cast<std::byte>((seq * 31 + i * 7) & 0xffu);
  return p;
}

inline std::vector<fs::path> segment_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".vsp") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::vector<char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// Every file in a directory, to put a spool back exactly as it was between damage variants.
using Snapshot = std::map<std::string, std::vector<char>>;

inline Snapshot snapshot(const fs::path& dir) {
  Snapshot s;
  for (const auto& e : fs::directory_iterator(dir)) s[e.path().filename().string()] = read_bytes(e.path());
  return s;
}

inline void restore(const fs::path& dir, const Snapshot& s) {
  for (const auto& e : fs::directory_iterator(dir)) fs::remove(e.path());
  for (const auto& [name, bytes] : s) write_bytes(dir / name, bytes);
}

inline SpoolConfig small_config(const fs::path& dir) {
  SpoolConfig c;
  c.dir = dir;
  c.max_bytes = 1 << 20;
  c.segment_bytes = 256;
  c.max_record_bytes = 4096;
  c.fsync = SpoolConfig::Fsync::kInterval;
  // A loaded machine or disk may make a healthy fsync slow: only the tests about hung syncs (which
  // set their own) may see one reported as pending.
  c.sync_wait = std::chrono::seconds(30);
  return c;
}

// A spool open_ok() opened and the warnings its recovery gave.
struct OpenedSpool {
  Spool spool;
  std::vector<std::string> warnings;
};

// Opens or fails the test, with the warnings in the log.
inline OpenedSpool open_ok(const SpoolConfig& c) {
  std::vector<std::string> warnings;
  vantage::platform::Result<Spool> o = Spool::open(c, warnings);
  for (const auto& w : warnings) MESSAGE("spool warning: " << w);
  INFO(o.error());
  REQUIRE(o.has_value());
  return OpenedSpool{std::move(o).value(), std::move(warnings)};
}

inline void append_ok(Spool& s, std::size_t size) {
  const std::uint64_t seq = s.next_seq();
  const vantage::platform::Status st = s.append(seq, payload_for(seq, size));
  INFO(st.message());
  REQUIRE(st);
}

// Reads every live record after after_seq and checks it is a consecutive run with the payloads
// payload_for() made; returns the seqs.
inline std::vector<std::uint64_t> read_all(Spool& s, std::uint64_t after_seq = 0) {
  std::vector<std::uint64_t> seqs;
  for (auto r = s.next_unacked(after_seq); r; r = s.next_unacked(r->seq)) {
    CHECK(r->payload == payload_for(r->seq, r->payload.size()));
    seqs.push_back(r->seq);
  }
  return seqs;
}

inline bool consecutive(const std::vector<std::uint64_t>& seqs, std::uint64_t first, std::uint64_t last) {
  if (last < first) return seqs.empty();
  if (seqs.size() != last - first + 1) return false;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i] != first + i) return false;
  }
  return true;
}

}  // namespace spool_test
