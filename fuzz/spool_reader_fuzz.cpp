// libFuzzer target: the spool's view of whatever a crash or a rotting disk leaves. The input is
// written as a segment file (and, when its last 44 bytes start with the state magic "VSST", those
// as the state file), then the spool is opened, read, appended to, acked and reopened. Besides crashes and
// leaks it traps when recovery is not a fixed point: a second open must find nothing to repair
// and the same records.
#include <stdlib.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "agent/ship/spool.hpp"
#include "platform/result.hpp"

namespace {

namespace fs = std::filesystem;
using vantage::agent::ship::Spool;
using vantage::agent::ship::SpoolConfig;
using vantage::platform::Result;

constexpr std::size_t kStateBytes = 44;

void write_file(const fs::path& p, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

std::vector<std::uint64_t> read_all(Spool& s) {
  std::vector<std::uint64_t> seqs;
  for (auto r = s.next_unacked(0); r; r = s.next_unacked(r->seq)) {
    if (!seqs.empty() && r->seq <= seqs.back()) __builtin_trap();
    if (r->payload.size() > s.config().max_record_bytes) __builtin_trap();
    seqs.push_back(r->seq);
  }
  return seqs;
}

void run(const fs::path& dir, const std::uint8_t* data, std::size_t size) {
  std::size_t segment_size = size;
  const std::uint8_t* tail = size >= kStateBytes ? data + size - kStateBytes : nullptr;
  if (tail != nullptr && tail[0] == 'V' && tail[1] == 'S' && tail[2] == 'S' && tail[3] == 'T') {
    segment_size = size - kStateBytes;
    write_file(dir / "state", data + segment_size, kStateBytes);
  }
  write_file(dir / "seg-00000000000000000001.vsp", data, segment_size);

  SpoolConfig cfg;
  cfg.dir = dir;
  cfg.max_bytes = 64 * 1024;
  cfg.segment_bytes = 4096;
  cfg.max_record_bytes = 4096;
  cfg.fsync = SpoolConfig::Fsync::kInterval;
  cfg.fsync_interval = std::chrono::hours(1);  // fsync cost is not what is being fuzzed

  std::vector<std::uint64_t> first;
  {
    std::vector<std::string> repairs;
    Result<Spool> o = Spool::open(cfg, repairs);
    if (!o) return;  // a state file naming an exhausted seq space, or an I/O error
    Spool& s = *o;
    first = read_all(s);
    if (s.stats().records != first.size()) __builtin_trap();
    const std::uint64_t seq = s.next_seq();
    const std::byte payload[3] = {std::byte{1}, std::byte{2}, std::byte{3}};
    if (s.append(seq, payload)) first.push_back(seq);
    if (!first.empty()) (void)s.ack(first[first.size() / 2] - 1);
    (void)s.flush();
    first = read_all(s);
  }
  std::vector<std::string> warnings;
  Result<Spool> again = Spool::open(cfg, warnings);
  if (!again) __builtin_trap();
  if (!warnings.empty()) __builtin_trap();
  if (read_all(*again) != first) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // tmpfs when there is one: the spool fsyncs on every open, which would otherwise bound the
  // fuzzer at a few dozen runs per second.
  std::error_code shm_ec;
  const fs::path base =
      fs::is_directory("/dev/shm", shm_ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
  std::string tmpl = (base / "spool-fuzz-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return 0;
  const fs::path dir = tmpl;
  run(dir, data, size);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
