// The disk spool: segment scanning and recovery, appends, acks, drops and validated reads.
#include "agent/ship/spool.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>
#include <system_error>

#include "agent/ship/crc32c.hpp"
#include "agent/ship/spool_syncer.hpp"
#include "platform/byte_order.hpp"

// Segment offsets and state files are 64-bit on every target; armhf needs _FILE_OFFSET_BITS=64
// (set by agent/ship/CMakeLists.txt) or pread/ftruncate would silently work in 32 bits.
static_assert(sizeof(off_t) == 8, "build with -D_FILE_OFFSET_BITS=64");

namespace vantage::agent::ship {

namespace {

using platform::Errc;
using platform::Status;

constexpr std::uint32_t kRecordMagic = 0x31525356u;  // "VSR1" on disk
constexpr std::uint32_t kStateMagic = 0x54535356u;   // "VSST" on disk
constexpr std::uint32_t kStateVersion = 1;
constexpr std::size_t kStateBytes = 44;
constexpr std::size_t kHeader = kSpoolRecordHeaderBytes;
constexpr std::size_t kHeaderCrcOffset = 16;
// Segment offsets are u32 in the index; both limits keep every segment below 2^31 bytes.
constexpr std::uint64_t kMaxSegmentBytes = 1ull << 30;
constexpr std::uint32_t kMaxRecordBytesLimit = 1u << 30;
constexpr std::size_t kScanChunk = 64 * 1024;
constexpr const char* kStateName = "state";
constexpr const char* kStateTmpName = "state.tmp";
constexpr std::uint32_t kIncarnationMagic = 0x4e495356u;  // "VSIN" on disk
constexpr std::uint32_t kIncarnationVersion = 1;
constexpr std::size_t kIncarnationBytes = 28;
constexpr const char* kIncarnationName = "incarnation";
constexpr const char* kIncarnationTmpName = "incarnation.tmp";
constexpr const char* kReserveName = "reserve";
// Reads of one record that fail with an I/O error before it is given up as lost.
constexpr unsigned kReadAttempts = 3;
constexpr std::size_t kSegNameDigits = 20;

struct Header {
  std::uint32_t magic = 0;
  std::uint32_t length = 0;
  std::uint64_t seq = 0;
  std::uint32_t crc = 0;
};

Header decode_header(const std::array<std::byte, kHeader>& h) {
  return Header{platform::load_le32(h.data()), platform::load_le32(h.data() + 4), platform::load_le64(h.data() + 8), platform::load_le32(h.data() + 16)};
}

// What an errno means to a caller: a limit that freeing space or descriptors may lift, or I/O.
Errc errc_of(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
      return Errc::kExhausted;
    default:
      return Errc::kIo;
  }
}

Status sys_error(int err, const std::string& what, const std::filesystem::path& path) {
  return Status::error(what + " " + path.string() + ": " + std::strerror(err), errc_of(err));
}

// Reads up to n bytes; fewer only at end of file. -1 on error (errno set).
ssize_t pread_full(SpoolFiles& files, int fd, void* buf, std::size_t n, std::uint64_t off) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = files.pread(fd, static_cast<char*>(buf) + got, n - got, off + got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// 0 or an errno. Header and payload go in one pwritev so that, short of a torn write the next
// open() cuts off, a record reaches the page cache whole. A short write goes on from where it
// stopped; the kernel reports a full disk on the call after the one that wrote the last byte.
int pwrite_full(SpoolFiles& files, int fd, std::span<const std::byte> a, std::span<const std::byte> b,
                std::uint64_t off) {
  std::size_t done = 0;
  const std::size_t total = a.size() + b.size();
  while (done < total) {
    std::array<iovec, 2> iov{};
    int n = 0;
    if (done < a.size()) {
      iov[0] = iovec{const_cast<std::byte*>(a.data() + done), a.size() - done};
      iov[1] = iovec{const_cast<std::byte*>(b.data()), b.size()};
      n = b.empty() ? 1 : 2;
    } else {
      const std::size_t in_b = done - a.size();
      iov[0] = iovec{const_cast<std::byte*>(b.data() + in_b), b.size() - in_b};
      n = 1;
    }
    const ssize_t w = files.pwritev(fd, iov.data(), n, off + done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    done += static_cast<std::size_t>(w);
  }
  return 0;
}

bool disk_full(int err) { return err == ENOSPC || err == EDQUOT; }

using StateFile = SpoolStateFile;

// sync_fd()'s result when the sync (or what had to follow it) failed; settled_error_ says how.
constexpr int kSyncFailed = -2;

std::array<std::byte, kStateBytes> encode_state(const StateFile& s) {
  std::array<std::byte, kStateBytes> b{};
  platform::store_le32(b.data(), kStateMagic);
  platform::store_le32(b.data() + 4, kStateVersion);
  platform::store_le64(b.data() + 8, s.next_seq);
  platform::store_le64(b.data() + 16, s.acked_seq);
  platform::store_le64(b.data() + 24, s.dropped_through);
  platform::store_le64(b.data() + 32, s.dropped_total);
  platform::store_le32(b.data() + 40, crc32c(std::span<const std::byte>(b.data(), 40)));
  return b;
}

enum class StateRead { kOk, kMissing, kCorrupt };

// I/O errors other than "missing" are start-up errors; bad contents are not.
StateRead read_state(SpoolFiles& files, const std::filesystem::path& path, StateFile& out, Status& err) {
  SpoolFd fd(files.open(path.c_str(), O_RDONLY | O_CLOEXEC, 0));
  if (!fd.valid()) {
    if (errno == ENOENT) return StateRead::kMissing;
    err = sys_error(errno, "cannot open", path);
    return StateRead::kCorrupt;
  }
  std::array<std::byte, kStateBytes + 1> b{};
  const ssize_t n = pread_full(files, fd.get(), b.data(), b.size(), 0);
  if (n < 0) {
    err = sys_error(errno, "cannot read", path);
    return StateRead::kCorrupt;
  }
  if (static_cast<std::size_t>(n) != kStateBytes || platform::load_le32(b.data()) != kStateMagic ||
      platform::load_le32(b.data() + 4) != kStateVersion ||
      platform::load_le32(b.data() + 40) != crc32c(std::span<const std::byte>(b.data(), 40))) {
    return StateRead::kCorrupt;
  }
  out.next_seq = platform::load_le64(b.data() + 8);
  out.acked_seq = platform::load_le64(b.data() + 16);
  out.dropped_through = platform::load_le64(b.data() + 24);
  out.dropped_total = platform::load_le64(b.data() + 32);
  return StateRead::kOk;
}

std::array<std::byte, kIncarnationBytes> encode_incarnation(const SpoolIncarnation& id) {
  std::array<std::byte, kIncarnationBytes> b{};
  platform::store_le32(b.data(), kIncarnationMagic);
  platform::store_le32(b.data() + 4, kIncarnationVersion);
  std::memcpy(b.data() + 8, id.data(), id.size());
  platform::store_le32(b.data() + 24, crc32c(std::span<const std::byte>(b.data(), 24)));
  return b;
}

enum class IncarnationRead { kOk, kMissing, kCorrupt };

// An unreadable file counts as corrupt: a new incarnation is always safe, so no doubt about the
// old one can stop the agent from starting.
IncarnationRead read_incarnation(SpoolFiles& files, int dir_fd, SpoolIncarnation& out) {
  SpoolFd fd(files.openat(dir_fd, kIncarnationName, O_RDONLY | O_CLOEXEC, 0));
  if (!fd.valid()) return errno == ENOENT ? IncarnationRead::kMissing : IncarnationRead::kCorrupt;
  std::array<std::byte, kIncarnationBytes + 1> b{};
  const ssize_t n = pread_full(files, fd.get(), b.data(), b.size(), 0);
  if (n != static_cast<ssize_t>(kIncarnationBytes) || platform::load_le32(b.data()) != kIncarnationMagic ||
      platform::load_le32(b.data() + 4) != kIncarnationVersion ||
      platform::load_le32(b.data() + 24) != crc32c(std::span<const std::byte>(b.data(), 24))) {
    return IncarnationRead::kCorrupt;
  }
  std::memcpy(out.data(), b.data() + 8, out.size());
  if (std::all_of(out.begin(), out.end(), [](std::uint8_t v) { return v == 0; })) return IncarnationRead::kCorrupt;
  return IncarnationRead::kOk;
}

// 128 bits from the kernel's generator. Without blocking when it can; before the pool is ready
// (very early boot) it waits for it rather than risk an id another spool could also draw.
Status new_incarnation(SpoolIncarnation& out, const std::filesystem::path& dir) {
  for (int flags : {GRND_NONBLOCK, 0}) {
    for (;;) {
      std::size_t got = 0;
      while (got < out.size()) {
        const ssize_t r = ::getrandom(out.data() + got, out.size() - got, static_cast<unsigned>(flags));
        if (r < 0) break;
        got += static_cast<std::size_t>(r);
      }
      if (got == out.size()) {
        if (std::any_of(out.begin(), out.end(), [](std::uint8_t v) { return v != 0; })) return {};
        continue;  // all zero is reserved for "no incarnation"
      }
      if (errno == EINTR) continue;
      break;
    }
    if (errno != EAGAIN) break;
  }
  return sys_error(errno, "cannot draw an incarnation id for", dir);
}

std::optional<std::uint64_t> parse_segment_name(const std::string& name) {
  constexpr std::string_view kPrefix = "seg-";
  constexpr std::string_view kSuffix = ".vsp";
  if (name.size() != kPrefix.size() + kSegNameDigits + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return std::nullopt;
  }
  std::uint64_t v = 0;
  for (std::size_t i = kPrefix.size(); i < kPrefix.size() + kSegNameDigits; ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return std::nullopt;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

std::string config_problem(const SpoolConfig& c) {
  if (c.dir.empty()) return "spool dir is empty";
  if (c.segment_bytes == 0 || c.segment_bytes > kMaxSegmentBytes) return "segment_bytes must be 1..1 GiB";
  if (c.max_record_bytes == 0 || c.max_record_bytes > kMaxRecordBytesLimit) {
    return "max_record_bytes must be 1..1 GiB";
  }
  if (c.max_bytes <= kHeader) return "max_bytes must exceed the record header";
  return {};
}

}  // namespace

std::string to_hex(const SpoolIncarnation& incarnation) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(incarnation.size() * 2);
  for (const std::uint8_t b : incarnation) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

SpoolFd& SpoolFd::operator=(SpoolFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void SpoolFd::reset(int fd) {
  // close() errors are not retried: on Linux the descriptor is gone either way, and data
  // durability is decided by the explicit fdatasync calls, not by close.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Spool::Spool(SpoolConfig config)
    : config_(std::move(config)),
      files_(config_.files ? config_.files
                           : std::shared_ptr<SpoolFiles>(&posix_spool_files(), [](SpoolFiles*) {})),
      syncer_(std::make_unique<SpoolSyncer>(files_)) {}

Spool::Spool(Spool&& other) noexcept = default;
Spool& Spool::operator=(Spool&& other) noexcept = default;
Spool::~Spool() = default;

std::filesystem::path Spool::segment_path(std::uint64_t first_seq) const {
  std::array<char, 32> name{};
  std::snprintf(name.data(), name.size(), "seg-%020llu.vsp", static_cast<unsigned long long>(first_seq));
  return config_.dir / name.data();
}

platform::Result<Spool> Spool::open(const SpoolConfig& config, std::vector<std::string>& warnings) {
  if (const std::string problem = config_problem(config); !problem.empty()) {
    return Status::error("spool " + config.dir.string() + ": " + problem, Errc::kInvalid);
  }
  Spool spool(config);
  if (spool.files_->create_directories(config.dir) != 0) {
    return sys_error(errno, "cannot create spool directory", config.dir);
  }
  spool.dir_fd_.reset(spool.files_->open(config.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0));
  if (!spool.dir_fd_.valid()) return sys_error(errno, "cannot open spool directory", config.dir);
  if (Status st = spool.recover(warnings); !st) return st;
  return spool;
}

std::chrono::milliseconds Spool::sync_wait() const {
  return unbounded_sync_ ? std::chrono::milliseconds(-1) : config_.sync_wait;
}

std::uint64_t Spool::saved_floor() const {
  return saved_state_ ? std::max(saved_state_->acked_seq, saved_state_->dropped_through) : 0;
}

int Spool::settle_sync() {
  if (!pending_sync_) return 0;
  const int r = syncer_->collect(sync_wait());
  if (r == SpoolSyncer::kPending) return r;
  const SyncJob job = *pending_sync_;
  pending_sync_.reset();
  if (Status st = apply_sync(job, r); !st) {
    settled_error_ = std::move(st);
    return kSyncFailed;
  }
  return 0;
}

int Spool::sync_fd(int fd, bool data_only, const SyncJob& job) {
  if (const int r = settle_sync(); r != 0) return r;
  const int r = syncer_->sync(fd, data_only, sync_wait());
  if (r == SpoolSyncer::kPending) {
    pending_sync_ = job;
    return r;
  }
  if (Status st = apply_sync(job, r); !st) {
    settled_error_ = std::move(st);
    return kSyncFailed;
  }
  return 0;
}

Status Spool::apply_sync(const SyncJob& job, int result) {
  if (result == 0) ++fsyncs_;
  switch (job.kind) {
    case SyncJob::Kind::kSegment: {
      if (result == 0) {
        segment_synced(job.first_seq, job.through);
        recompute_durable();
        return {};
      }
      const std::uint64_t lost = segment_sync_failed(job.first_seq);
      recompute_durable();
      Status st = sys_error(result, "cannot fdatasync", segment_path(job.first_seq));
      if (lost == 0) return st;
      return Status::error(st.message() + "; its " + std::to_string(lost) +
                               " records written since its last good sync count as lost",
                           st.code());
    }
    case SyncJob::Kind::kDir:
      if (result != 0) return sys_error(result, "cannot fsync", config_.dir);
      if (job.dir_gen == dir_gen_) dir_unsynced_from_ = 0;
      if (job.carries_state) {
        saved_state_ = job.state;
        if (state_renamed_ == job.state) state_renamed_.reset();
      }
      recompute_durable();
      return {};
    case SyncJob::Kind::kStateTmp:
    case SyncJob::Kind::kIncarnationTmp: {
      const bool state = job.kind == SyncJob::Kind::kStateTmp;
      const char* tmp_name = state ? kStateTmpName : kIncarnationTmpName;
      const char* name = state ? kStateName : kIncarnationName;
      if (result != 0) return sys_error(result, "cannot fsync", config_.dir / tmp_name);
      // The file is complete on disk: it replaces the old one, durable once the directory is.
      if (files_->renameat(dir_fd_.get(), tmp_name, name) != 0) {
        return sys_error(errno, "cannot rename " + (config_.dir / tmp_name).string() + " to", config_.dir / name);
      }
      ++dir_gen_;
      if (state) state_renamed_ = job.state;
      return {};
    }
    case SyncJob::Kind::kStateInPlace:
      if (result != 0) return sys_error(result, "cannot fsync", config_.dir / kStateName);
      saved_state_ = job.state;
      return {};
  }
  return {};
}

void Spool::segment_synced(std::uint64_t first_seq, std::uint64_t through) {
  const auto last_of = [this](std::uint64_t first) -> std::optional<std::uint64_t> {
    for (const Segment& seg : segments_) {
      if (seg.first_seq == first) return seg.offsets.empty() ? std::nullopt : std::optional(seg.last_seq());
    }
    return std::nullopt;
  };
  for (auto it = unsynced_closed_.begin(); it != unsynced_closed_.end(); ++it) {
    if (it->first_seq != first_seq) continue;
    const std::optional<std::uint64_t> last = last_of(first_seq);
    if (!last || through >= *last) {
      unsynced_closed_.erase(it);
    } else {
      it->from = std::max(it->from, through + 1);
    }
    return;
  }
  if (write_unsynced_from_ != 0 && write_fd_.valid() && segments_.back().first_seq == first_seq) {
    const Segment& seg = segments_.back();
    if (seg.offsets.empty() || through >= seg.last_seq()) {
      write_unsynced_from_ = 0;
    } else if (through >= write_unsynced_from_) {
      write_unsynced_from_ = through + 1;
    }
  }
}

std::uint64_t Spool::segment_sync_failed(std::uint64_t first_seq) {
  // After a failed fdatasync the kernel may have given up the write-back of the dirty pages and
  // marked them clean, so a retry returns 0 without writing them: what was written since the
  // segment's last good sync is not trusted, ever. It is not sent (a power cut could give its
  // seqs back), but counted as lost, and the segment takes no more records.
  std::uint64_t from = 0;
  for (auto it = unsynced_closed_.begin(); it != unsynced_closed_.end(); ++it) {
    if (it->first_seq == first_seq) {
      from = it->from;
      unsynced_closed_.erase(it);
      break;
    }
  }
  if (from == 0 && write_unsynced_from_ != 0 && write_fd_.valid() && segments_.back().first_seq == first_seq) {
    from = write_unsynced_from_;
    write_unsynced_from_ = 0;
    write_poisoned_ = true;
  }
  if (from == 0) return 0;
  std::uint64_t lost = 0;
  for (const Segment& seg : segments_) {
    if (seg.first_seq != first_seq || seg.offsets.empty()) continue;
    for (std::uint64_t s = std::max(from, floor() + 1); s <= seg.last_seq(); ++s) {
      if (is_bad(s)) continue;
      live_bytes_ -= record_bytes(s);
      --live_records_;
      bad_seqs_.insert(std::upper_bound(bad_seqs_.begin(), bad_seqs_.end(), s), s);
      ++lost;
    }
  }
  sync_lost_ += lost;
  return lost;
}

void Spool::recompute_durable() {
  std::uint64_t limit = next_seq_;
  for (const UnsyncedSegment& u : unsynced_closed_) limit = std::min(limit, u.from);
  if (write_unsynced_from_ != 0) limit = std::min(limit, write_unsynced_from_);
  if (dir_unsynced_from_ != 0) limit = std::min(limit, dir_unsynced_from_);
  durable_seq_ = std::max(durable_seq_, limit - 1);
}

Status Spool::sync_error(int result, const std::string& what, const std::filesystem::path& path) const {
  if (result == kSyncFailed) return settled_error_;
  if (result == SpoolSyncer::kPending) {
    return Status::error(what + " " + path.string() + ": still running after " +
                             std::to_string(config_.sync_wait.count()) + " ms (a hung or very slow disk)",
                         Errc::kUnavailable);
  }
  return sys_error(result, what, path);
}

Status Spool::recover(std::vector<std::string>& warnings) {
  SpoolFiles& files = *files_;
  const std::filesystem::path state_path = config_.dir / kStateName;
  StateFile state;
  Status read;
  const StateRead state_read = read_state(files, state_path, state, read);
  if (!read) return read;

  // Segments in seq order, from their names; anything else in the directory is left alone.
  std::vector<std::uint64_t> firsts;
  bool reserve_found = false;
  {
    std::vector<std::string> names;
    if (files.list(config_.dir, names) != 0) return sys_error(errno, "cannot list spool directory", config_.dir);
    for (const std::string& name : names) {
      if (auto first = parse_segment_name(name)) firsts.push_back(*first);
      if (name == kReserveName) reserve_found = true;
    }
  }
  // Left by an interrupted write of the state or the incarnation, if at all.
  files.unlinkat(dir_fd_.get(), kStateTmpName);
  files.unlinkat(dir_fd_.get(), kIncarnationTmpName);
  std::sort(firsts.begin(), firsts.end());

  if (state_read == StateRead::kMissing && !firsts.empty()) {
    warnings.push_back(state_path.string() + ": missing; all spooled records count as unacked");
  } else if (state_read == StateRead::kCorrupt) {
    warnings.push_back(state_path.string() + ": corrupt, ignored; all spooled records count as unacked");
    state = StateFile{};
  }

  if (state_read == StateRead::kOk) saved_state_ = state;
  acked_seq_ = state.acked_seq;
  dropped_through_ = state.dropped_through;
  dropped_total_ = state.dropped_total;

  std::vector<std::byte> chunk(kScanChunk);
  std::uint64_t prev_seq = 0;  // seqs must rise strictly across the whole spool
  const std::uint64_t floor_seq = std::max(state.acked_seq, state.dropped_through);
  // Damage this open cut or removed since the last segment it kept, and the highest seq the
  // records in it could have had (each record takes at least a header, so the bytes bound it).
  bool damage_open = false;
  std::uint64_t damage_reach = 0;
  for (const std::uint64_t first : firsts) {
    const std::filesystem::path path = segment_path(first);
    SpoolFd fd(files.open(path.c_str(), O_RDWR | O_CLOEXEC, 0));
    if (!fd.valid()) return sys_error(errno, "cannot open segment", path);
    std::uint64_t file_size = 0;
    if (files.size(fd.get(), file_size) != 0) return sys_error(errno, "cannot stat segment", path);

    Segment seg;
    seg.first_seq = first;
    std::uint64_t off = 0;
    std::string problem;
    while (off < file_size) {
      if (file_size - off < kHeader) {
        problem = "torn record header";
        break;
      }
      std::array<std::byte, kHeader> hb{};
      const ssize_t n = pread_full(files, fd.get(), hb.data(), hb.size(), off);
      if (n < 0) return sys_error(errno, "cannot read segment", path);
      if (static_cast<std::size_t>(n) != kHeader) {
        problem = "torn record header";
        break;
      }
      const Header h = decode_header(hb);
      const std::uint64_t expected = seg.offsets.empty() ? first : seg.last_seq() + 1;
      if (h.magic != kRecordMagic) {
        problem = "bad record magic";
        break;
      }
      if (h.length > config_.max_record_bytes) {
        problem = "record length " + std::to_string(h.length) + " above max_record_bytes";
        break;
      }
      const std::uint64_t rec = kHeader + std::uint64_t{h.length};
      if (rec > file_size - off) {
        problem = "torn record (length " + std::to_string(h.length) + " runs past the end of the file)";
        break;
      }
      if (off + rec > std::numeric_limits<std::uint32_t>::max()) {
        problem = "segment larger than 4 GiB";
        break;
      }
      if (h.seq != expected || h.seq <= prev_seq) {
        problem = "record seq " + std::to_string(h.seq) + ", expected " + std::to_string(expected);
        break;
      }
      std::uint32_t crc = crc32c(std::span<const std::byte>(hb.data(), kHeaderCrcOffset));
      bool short_read = false;
      for (std::uint64_t done = 0; done < h.length;) {
        const std::size_t want =
            static_cast<std::size_t>(std::min<std::uint64_t>(h.length - done, chunk.size()));
        const ssize_t r = pread_full(files, fd.get(), chunk.data(), want, off + kHeader + done);
        if (r < 0) return sys_error(errno, "cannot read segment", path);
        if (static_cast<std::size_t>(r) != want) {
          short_read = true;  // the file shrank under us: treat like a torn tail
          break;
        }
        crc = crc32c_extend(crc, std::span<const std::byte>(chunk.data(), want));
        done += want;
      }
      if (short_read) {
        problem = "torn record";
        break;
      }
      if (crc != h.crc) {
        problem = "record CRC mismatch";
        break;
      }
      seg.offsets.push_back(static_cast<std::uint32_t>(off));
      off += rec;
    }
    seg.size = off;

    if (seg.offsets.empty()) {
      // Nothing valid (or a zero-length file from a crash right after it was created).
      if (files.unlinkat(dir_fd_.get(), path.filename().c_str()) != 0 && errno != ENOENT) {
        return sys_error(errno, "cannot remove segment", path);
      }
      if (file_size == 0) {
        warnings.push_back(path.string() + ": zero-length segment removed");
      } else {
        ++truncations_;
        truncated_bytes_ += file_size;
        damage_open = true;
        if (file_size >= kHeader) damage_reach = std::max(damage_reach, first + file_size / kHeader - 1);
        warnings.push_back(path.string() + ": offset 0: " + problem +
                           "; no valid records, segment removed (" + std::to_string(file_size) + " bytes)");
      }
      continue;
    }
    // Records lost to damage are counted by the open that finds (and cuts) it, so a later open
    // (a reload, a restart) does not count the same loss again: the seqs missing between the
    // records kept, when damage cut or removed what held them.
    if (damage_open) {
      const std::uint64_t from = std::max(prev_seq, floor_seq);
      if (seg.first_seq > from + 1) {
        lost_records_ += seg.first_seq - from - 1;
        damage_lost_.emplace_back(from + 1, seg.first_seq - 1);
      }
    }
    damage_open = false;
    damage_reach = 0;
    if (off < file_size) {
      if (files.ftruncate(fd.get(), off) != 0) return sys_error(errno, "cannot truncate", path);
      damage_open = true;
      damage_reach = seg.last_seq() + (file_size - off) / kHeader;
      ++truncations_;
      truncated_bytes_ += file_size - off;
      warnings.push_back(path.string() + ": offset " + std::to_string(off) + ": " + problem + "; kept " +
                         std::to_string(seg.offsets.size()) + " records (seq " +
                         std::to_string(seg.first_seq) + ".." + std::to_string(seg.last_seq()) + "), cut " +
                         std::to_string(file_size - off) + " bytes");
    }
    prev_seq = seg.last_seq();
    for (std::size_t i = 0; i < seg.offsets.size(); ++i) {
      if (seg.first_seq + i <= floor()) continue;
      ++live_records_;
      live_bytes_ += seg.record_end(i) - seg.offsets[i];
    }
    const std::uint64_t seg_first = seg.first_seq;
    const std::uint64_t seg_last = seg.last_seq();
    segments_.push_back(std::move(seg));
    // What a crashed process left may be in the page cache only, and a cut must reach the disk
    // before records after it are trusted: durable_seq() covers what is synced. A sync that
    // outlasts sync_wait does not stop the start: it is applied by a later call. One that fails
    // gives up the segment's records (counted as lost), since no later sync can vouch for them.
    // Once one sync is pending (a hung or slow disk) the rest wait for a later flush() rather than
    // each waiting sync_wait here.
    unsynced_closed_.push_back(UnsyncedSegment{seg_first, seg_first, std::move(fd)});
    if (!pending_sync_) {
      const int synced = sync_fd(unsynced_closed_.back().fd.get(), false,
                                 SyncJob{SyncJob::Kind::kSegment, seg_first, seg_last, 0, false, {}});
      if (synced == kSyncFailed) warnings.push_back(settled_error_.message());
    }
  }

  next_seq_ = std::max<std::uint64_t>({state.next_seq, prev_seq + 1, floor() + 1, 1});
  // Damage after the newest record kept: the records cut had seqs from prev_seq + 1 on. Those the
  // state file says were appended are lost. And the state's next_seq is saved only on acks and
  // drops, so it lags the appends: when the cut records could reach next_seq, the seqs handed out
  // from here may be ones the collector already stored (acked, but the ack not yet saved), which
  // it would take as duplicates of the new batches. The seq space then starts a new incarnation.
  bool seq_space_trusted = state_read == StateRead::kOk;
  std::string distrust;
  if (damage_open) {
    if (state_read == StateRead::kOk) {
      const std::uint64_t from = std::max(prev_seq, floor_seq);
      const std::uint64_t to = std::min(state.next_seq - 1, damage_reach);
      if (to > from) {
        lost_records_ += to - from;
        damage_lost_.emplace_back(from + 1, to);
      }
    }
    if (damage_reach >= next_seq_) {
      seq_space_trusted = false;
      distrust = "records cut from the end of the spool may have had seqs from " + std::to_string(next_seq_) +
                 " on, which could be handed out again";
      // The new seq space continues right after the records kept: the seqs lost here (counted
      // above) are not left as a hole below next_seq for a later open to count again.
      next_seq_ = std::max(prev_seq, floor()) + 1;
    }
  }
  recompute_durable();
  // The bound also holds after a restart with a smaller max_bytes.
  if (const std::uint64_t dropped = drop_oldest_for(0); dropped > 0) {
    warnings.push_back(config_.dir.string() + ": dropped " + std::to_string(dropped) +
                       " oldest records to fit max_bytes " + std::to_string(config_.max_bytes));
  }
  // Before the state file is rewritten: a next_seq rebuilt from the segments may have gone back,
  // and must never be persisted beside the incarnation that already used those seqs.
  if (Status st = load_or_create_incarnation(seq_space_trusted, distrust, warnings); !st) return st;
  if (reserve_found) {
    std::uint64_t size = 0;
    SpoolFd fd(files.openat(dir_fd_.get(), kReserveName, O_RDONLY | O_CLOEXEC, 0));
    reserve_present_ = config_.reserve_bytes > 0 && fd.valid() && files.size(fd.get(), size) == 0 &&
                       size == config_.reserve_bytes;
    // One of another size (reserve_bytes changed, or 0 now) or a partial one is given back: the
    // space is the records', and a reserve of the right size is made again below if one is wanted.
    if (!reserve_present_) files.unlinkat(dir_fd_.get(), kReserveName);
  }
  // Persisting here catches a read-only spool at start-up, and must precede deleting dead segments.
  // An fsync still running (a hung disk) is no reason not to start: a later flush() saves it.
  // (With a new incarnation the state is waited for: it must not stay paired with the old one.)
  Status persisted = persist_state();
  unbounded_sync_ = false;
  if (!persisted && persisted.code() != Errc::kUnavailable) return persisted;
  if (!reserve_present_) ensure_reserve();

  if (!segments_.empty()) {
    const Segment& last = segments_.back();
    if (last.last_seq() + 1 == next_seq_ && last.size < config_.segment_bytes) {
      const std::filesystem::path path = segment_path(last.first_seq);
      write_fd_.reset(files.open(path.c_str(), O_WRONLY | O_CLOEXEC, 0));
      if (!write_fd_.valid()) return sys_error(errno, "cannot open segment", path);
    }
  }
  last_sync_ = std::chrono::steady_clock::now();
  return {};
}

bool Spool::is_bad(std::uint64_t seq) const {
  return std::binary_search(bad_seqs_.begin(), bad_seqs_.end(), seq);
}

std::optional<std::uint64_t> Spool::first_live_after(std::uint64_t after) const {
  after = std::max(after, floor());
  auto it = std::partition_point(segments_.begin(), segments_.end(),
                                 [after](const Segment& s) { return s.last_seq() <= after; });
  for (; it != segments_.end(); ++it) {
    for (std::uint64_t s = std::max(it->first_seq, after + 1); s <= it->last_seq(); ++s) {
      if (!is_bad(s)) return s;
    }
  }
  return std::nullopt;
}

std::optional<std::uint64_t> Spool::last_live() const {
  for (auto it = segments_.rbegin(); it != segments_.rend(); ++it) {
    for (std::uint64_t s = it->last_seq(); s >= it->first_seq && s > floor(); --s) {
      if (!is_bad(s)) return s;
    }
    if (it->first_seq <= floor()) break;
  }
  return std::nullopt;
}

std::uint64_t Spool::record_bytes(std::uint64_t seq) const {
  auto it = std::partition_point(segments_.begin(), segments_.end(),
                                 [seq](const Segment& s) { return s.last_seq() < seq; });
  if (it == segments_.end() || seq < it->first_seq) return 0;
  const auto i = static_cast<std::size_t>(seq - it->first_seq);
  return it->record_end(i) - it->offsets[i];
}

void Spool::retire_through(std::uint64_t seq) {
  const std::uint64_t from = floor();
  if (seq <= from) return;
  for (const Segment& seg : segments_) {
    if (seg.last_seq() <= from) continue;
    if (seg.first_seq > seq) break;
    const std::uint64_t hi = std::min(seg.last_seq(), seq);
    for (std::uint64_t s = std::max(seg.first_seq, from + 1); s <= hi; ++s) {
      if (is_bad(s)) continue;  // already taken out of the live counters
      const auto i = static_cast<std::size_t>(s - seg.first_seq);
      live_bytes_ -= seg.record_end(i) - seg.offsets[i];
      --live_records_;
    }
  }
  bad_seqs_.erase(bad_seqs_.begin(), std::upper_bound(bad_seqs_.begin(), bad_seqs_.end(), seq));
}

std::uint64_t Spool::drop_oldest_for(std::uint64_t bytes) {
  std::uint64_t dropped = 0;
  while (live_bytes_ + bytes > config_.max_bytes) {
    const std::optional<std::uint64_t> oldest = first_live_after(floor());
    if (!oldest) break;
    retire_through(*oldest);
    dropped_through_ = *oldest;
    ++dropped_total_;
    ++dropped;
  }
  return dropped;
}

bool Spool::drop_oldest_segment() {
  const std::optional<std::uint64_t> oldest = first_live_after(floor());
  if (!oldest) return false;
  auto it = std::partition_point(segments_.begin(), segments_.end(),
                                 [&oldest](const Segment& s) { return s.last_seq() < *oldest; });
  const std::uint64_t through = it->last_seq();
  const std::uint64_t before = live_records_;
  retire_through(through);
  dropped_through_ = through;
  dropped_total_ += before - live_records_;
  full_disk_drops_ += before - live_records_;
  return true;
}

void Spool::delete_dead_segments() {
  // Deletions that failed before come first: a full disk needs the space.
  for (auto it = unlink_pending_.begin(); it != unlink_pending_.end();) {
    const int r = files_->unlinkat(dir_fd_.get(), segment_path(*it).filename().c_str());
    it = r == 0 || errno == ENOENT ? unlink_pending_.erase(it) : it + 1;
  }
  // Only what the state on disk says is dead: the state in memory may be ahead of it.
  while (!segments_.empty() && segments_.front().last_seq() <= std::min(floor(), saved_floor())) {
    const Segment& seg = segments_.front();
    if (segments_.size() == 1) {
      write_fd_.reset();
      write_unsynced_from_ = 0;  // nothing in it is live any more
    }
    if (read_fd_.valid() && read_seg_first_ == seg.first_seq) read_fd_.reset();
    std::erase_if(unsynced_closed_, [&seg](const UnsyncedSegment& u) { return u.first_seq == seg.first_seq; });
    // A failed unlink is retried on the next call (and by the next open()); nothing depends on it.
    if (files_->unlinkat(dir_fd_.get(), segment_path(seg.first_seq).filename().c_str()) != 0 && errno != ENOENT) {
      unlink_pending_.push_back(seg.first_seq);
    }
    segments_.erase(segments_.begin());
  }
}

Status Spool::load_or_create_incarnation(bool seq_space_trusted, const std::string& distrust,
                                         std::vector<std::string>& warnings) {
  const std::filesystem::path path = config_.dir / kIncarnationName;
  const IncarnationRead read = read_incarnation(*files_, dir_fd_.get(), incarnation_);
  if (read == IncarnationRead::kOk) found_incarnation_ = incarnation_;
  if (read == IncarnationRead::kOk && seq_space_trusted) return {};
  const std::string old = read == IncarnationRead::kOk ? to_hex(incarnation_) : std::string();
  if (Status st = new_incarnation(incarnation_, config_.dir); !st) return st;
  const std::string fresh = to_hex(incarnation_);
  if (read == IncarnationRead::kCorrupt) {
    warnings.push_back(path.string() + ": corrupt or unreadable; new incarnation " + fresh);
  } else if (read == IncarnationRead::kOk) {
    const std::string why = distrust.empty() ? "state file missing or corrupt, so seqs may repeat" : distrust;
    warnings.push_back(path.string() + ": " + why + "; incarnation " + old + " replaced by " + fresh);
  } else if (seq_space_trusted) {
    warnings.push_back(path.string() + ": missing (a spool from before incarnations, or the file was "
                       "removed); new incarnation " + fresh);
  }
  // A fresh directory (missing incarnation and state) gets one without a warning. Its syncs are
  // waited for without sync_wait's bound (nothing watches open(), and the spool cannot start
  // without it); so is the state file that follows it (see recover()).
  unbounded_sync_ = true;
  return write_file_atomically(kIncarnationTmpName, encode_incarnation(incarnation_),
                               SyncJob{SyncJob::Kind::kIncarnationTmp, 0, 0, 0, false, {}});
}

void Spool::ensure_reserve() {
  if (config_.reserve_bytes == 0) return;
  SpoolFd fd(files_->openat(dir_fd_.get(), kReserveName, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (fd.valid()) {
    const std::vector<std::byte> zeros(static_cast<std::size_t>(config_.reserve_bytes));
    if (pwrite_full(*files_, fd.get(), zeros, {}, 0) == 0) {
      reserve_present_ = true;
      return;
    }
  }
  // No room yet: a partial reserve would only take space from the records.
  if (fd.valid()) files_->unlinkat(dir_fd_.get(), kReserveName);
  reserve_present_ = false;
}

bool Spool::release_reserve() {
  if (!reserve_present_) return false;
  if (files_->unlinkat(dir_fd_.get(), kReserveName) != 0 && errno != ENOENT) return false;
  reserve_present_ = false;
  return true;
}

Status Spool::write_file_atomically(const char* tmp_name, std::span<const std::byte> bytes, const SyncJob& job) {
  const std::filesystem::path tmp = config_.dir / tmp_name;
  for (int attempt = 0;; ++attempt) {
    int err = 0;
    const char* verb = "cannot create";
    {
      SpoolFd fd(files_->openat(dir_fd_.get(), tmp_name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
      if (!fd.valid()) {
        err = errno;
      } else {
        verb = "cannot write";
        err = pwrite_full(*files_, fd.get(), bytes, {}, 0);
      }
      // The sync renames the file into place when it returns (apply_sync), also on a later call.
      if (err == 0) {
        if (const int r = sync_fd(fd.get(), false, job); r != 0) return sync_error(r, "cannot fsync", tmp);
      }
    }
    if (err == 0) break;
    // On a full disk the reserve makes room for this small file, once.
    if (attempt == 0 && disk_full(err) && release_reserve()) continue;
    return sys_error(err, verb, tmp);
  }
  // The rename is durable only once the directory is; the directory fsync covers new segments too.
  return sync_dir();
}

Status Spool::write_state() {
  // A save that outlasted sync_wait goes on where it stopped (its fsync applied, the file renamed,
  // the directory synced) rather than from scratch: on a disk whose every fsync takes longer than
  // sync_wait, each call moves it one step, and the state still gets saved.
  if (const int r = settle_sync(); r != 0) return sync_error(r, "cannot fsync", config_.dir / kStateTmpName);
  if (state_renamed_) {
    if (Status st = sync_dir(); !st) return st;
  }
  const StateFile now = current_state();
  if (saved_state_ == now) return {};
  const auto bytes = encode_state(now);
  Status st = write_file_atomically(kStateTmpName, bytes,
                                    SyncJob{SyncJob::Kind::kStateTmp, 0, 0, 0, false, now});
  if (st || st.code() != Errc::kExhausted) return st;
  // A full disk and no reserve left: the state is rewritten in place, which needs no new space,
  // so acks and drops can still be saved (and segments deleted). Not atomic, but the 44 bytes sit
  // in one sector, and a torn write fails the CRC: the next open() then takes the state as
  // corrupt, which loses nothing (all spooled records count as unacked, under a new incarnation).
  SpoolFd fd(files_->openat(dir_fd_.get(), kStateName, O_WRONLY | O_CLOEXEC, 0));
  if (!fd.valid() || pwrite_full(*files_, fd.get(), bytes, {}, 0) != 0) return st;
  if (const int r = sync_fd(fd.get(), false, SyncJob{SyncJob::Kind::kStateInPlace, 0, 0, 0, false, now}); r != 0) {
    return sync_error(r, "cannot fsync", config_.dir / kStateName);
  }
  return {};
}

Status Spool::persist_state() {
  const Status st = write_state();
  state_dirty_ = saved_state_ != current_state();
  // Whatever part of the state is durable lets its dead segments go (also when a newer save is
  // still under way).
  delete_dead_segments();
  if (!st) return st;
  if (!reserve_present_) ensure_reserve();  // deletions may have made room again
  return {};
}

int Spool::fsync_dir() {
  SyncJob job{SyncJob::Kind::kDir, 0, 0, dir_gen_, false, {}};
  if (state_renamed_) {
    job.carries_state = true;
    job.state = *state_renamed_;
  }
  return sync_fd(dir_fd_.get(), false, job);
}

Status Spool::sync_dir() {
  if (const int r = fsync_dir(); r != 0) return sync_error(r, "cannot fsync", config_.dir);
  return {};
}

Status Spool::sync_data() {
  // A sync that outlasted its wait earlier counts now if it has returned.
  if (const int r = settle_sync(); r != 0) return sync_error(r, "cannot fdatasync", config_.dir);
  // Segments closed (or found at open) before their data was synced, oldest first. Each sync,
  // good or failed, takes its segment off the list (apply_sync).
  while (!unsynced_closed_.empty()) {
    const UnsyncedSegment& u = unsynced_closed_.front();
    const std::uint64_t first = u.first_seq;
    std::uint64_t through = first;
    for (const Segment& seg : segments_) {
      if (seg.first_seq == first && !seg.offsets.empty()) through = seg.last_seq();
    }
    if (const int r = sync_fd(u.fd.get(), true, SyncJob{SyncJob::Kind::kSegment, first, through, 0, false, {}});
        r != 0) {
      return sync_error(r, "cannot fdatasync", segment_path(first));
    }
  }
  if (write_unsynced_from_ != 0 && write_fd_.valid()) {
    const Segment& seg = segments_.back();
    if (const int r = sync_fd(write_fd_.get(), true,
                              SyncJob{SyncJob::Kind::kSegment, seg.first_seq, next_seq_ - 1, 0, false, {}});
        r != 0) {
      return sync_error(r, "cannot fdatasync", segment_path(seg.first_seq));
    }
  }
  if (dir_unsynced_from_ != 0) {
    if (Status st = sync_dir(); !st) return st;
  }
  recompute_durable();
  last_sync_ = std::chrono::steady_clock::now();
  return {};
}

Status Spool::flush() {
  Status saved;
  if (state_dirty_ || state_renamed_ || !unlink_pending_.empty()) saved = persist_state();
  Status synced = sync_data();
  return !synced ? synced : saved;
}

Status Spool::start_segment(std::uint64_t first_seq, int& err) {
  const std::filesystem::path path = segment_path(first_seq);
  // O_TRUNC: a file of this name is not in the index, so it holds nothing live.
  SpoolFd fd(files_->openat(dir_fd_.get(), path.filename().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                            0640));
  if (!fd.valid()) {
    err = errno;
    return sys_error(err, "cannot create segment", path);
  }
  write_fd_ = std::move(fd);
  write_poisoned_ = false;
  Segment seg;
  seg.first_seq = first_seq;
  segments_.push_back(std::move(seg));
  ++dir_gen_;
  if (dir_unsynced_from_ == 0) dir_unsynced_from_ = first_seq;
  return {};
}

Status Spool::append(std::uint64_t seq, std::span<const std::byte> payload) {
  if (seq != next_seq_) {
    return Status::error("spool " + config_.dir.string() + ": append of seq " + std::to_string(seq) +
                             ", expected " + std::to_string(next_seq_),
                         Errc::kInvalid);
  }
  const std::uint64_t rec = kHeader + std::uint64_t{payload.size()};
  if (payload.size() > config_.max_record_bytes || rec > config_.max_bytes) {
    ++append_failures_;
    return Status::error("spool " + config_.dir.string() + ": record of " + std::to_string(payload.size()) +
                             " bytes exceeds max_record_bytes " + std::to_string(config_.max_record_bytes) +
                             " or max_bytes " + std::to_string(config_.max_bytes),
                         Errc::kInvalid);
  }
  if (next_seq_ == std::numeric_limits<std::uint64_t>::max()) {
    ++append_failures_;
    return Status::error("spool " + config_.dir.string() + ": seq space exhausted", Errc::kExhausted);
  }

  // Errors absorbed here are counted; a sync still running is a stall (counted as such) instead.
  const auto absorb = [this](const Status& st) {
    if (!st && st.code() != Errc::kUnavailable) ++retried_errors_;
  };
  // A state that could not be saved earlier is tried again; its failure does not stop the record.
  if (state_dirty_) absorb(persist_state());
  // Drops are persisted before the new record is written, so a crash in between loses nothing
  // that was not already counted as dropped. If that save fails, the dropped records stay on disk
  // (not live) until a later save; a crash before then brings them back, which loses nothing.
  if (drop_oldest_for(rec) > 0) absorb(persist_state());

  for (;;) {
    int err = 0;
    Status st = write_record(seq, payload, err);
    if (st) return {};
    // A full disk: the oldest records make room, a segment at a time (a segment's space comes back
    // only once all of it is dead). Dropping frees space only once the drop is saved, so when not
    // even the state file can be written (the reserve is used up) the records are kept.
    // (A state that could not be saved here is not counted as an error of its own: the append's
    // failure, which the caller reports, is the one error.)
    if (disk_full(err) && persist_state() && drop_oldest_segment() && persist_state()) continue;
    ++append_failures_;
    return st;
  }
}

Status Spool::write_record(std::uint64_t seq, std::span<const std::byte> payload, int& err) {
  const std::uint64_t rec = kHeader + std::uint64_t{payload.size()};
  const bool every_record = config_.fsync == SpoolConfig::Fsync::kEveryRecord;
  if (!every_record && write_unsynced_from_ != 0 &&
      std::chrono::steady_clock::now() - last_sync_ >= config_.fsync_interval) {
    // Keeps syncs at most fsync_interval apart while appends continue; a failure is retried by the
    // next one or by flush(), and only delays sending. (A sync still running is a stall, counted
    // as such, not an error.)
    if (const Status st = sync_data(); !st && st.code() != Errc::kUnavailable) ++retried_errors_;
  }
  if (write_fd_.valid() &&
      (write_poisoned_ || (segments_.back().size > 0 && segments_.back().size + rec > config_.segment_bytes))) {
    // A closed segment that holds unsynced data keeps its descriptor until flush() syncs it.
    if (write_unsynced_from_ != 0) {
      unsynced_closed_.push_back(
          UnsyncedSegment{segments_.back().first_seq, write_unsynced_from_, std::move(write_fd_)});
      write_unsynced_from_ = 0;
    }
    write_fd_.reset();
  }
  bool fresh = false;
  if (!write_fd_.valid()) {
    if (Status st = start_segment(seq, err); !st) return st;
    fresh = true;
  }
  Segment& seg = segments_.back();
  const std::filesystem::path path = segment_path(seg.first_seq);

  std::array<std::byte, kHeader> h{};
  platform::store_le32(h.data(), kRecordMagic);
  platform::store_le32(h.data() + 4, static_cast<std::uint32_t>(payload.size()));
  platform::store_le64(h.data() + 8, seq);
  platform::store_le32(h.data() + kHeaderCrcOffset,
                       crc32c_extend(crc32c(std::span<const std::byte>(h.data(), kHeaderCrcOffset)), payload));

  err = pwrite_full(*files_, write_fd_.get(), h, payload, seg.size);
  // Written: from here the segment holds data its next sync must cover (the record is indexed
  // below, unless its sync fails).
  if (err == 0 && write_unsynced_from_ == 0) write_unsynced_from_ = seq;
  if (err == 0 && every_record) {
    const std::uint64_t first = seg.first_seq;
    int r = sync_fd(write_fd_.get(), true, SyncJob{SyncJob::Kind::kSegment, first, seq, 0, false, {}});
    if (r == 0 && dir_unsynced_from_ != 0) r = fsync_dir();
    if (r == kSyncFailed && write_poisoned_ && segments_.back().first_seq == first) {
      err = EIO;  // this segment's sync failed: the record is taken back out and reported
    } else if (r == kSyncFailed) {
      ++retried_errors_;  // an earlier sync's (or the directory's) failure, reported; retried
    }
    // Still running: the record is written, and becomes durable (and sendable) with a later sync.
  }
  if (err != 0) {
    // Take the record back out so the file ends at the last indexed record.
    if (fresh) {
      write_fd_.reset();
      if (files_->unlinkat(dir_fd_.get(), path.filename().c_str()) != 0 && errno != ENOENT) {
        ++retried_errors_;  // O_TRUNC clears it when this seq starts a segment again
      }
      segments_.pop_back();
    } else if (files_->ftruncate(write_fd_.get(), seg.size) != 0) {
      // The file keeps some or all of this record after the indexed ones. Its seq is used up, so
      // the next record starts a new segment after it and no seq appears twice on disk; the next
      // open() cuts what is torn. The earlier records still need their sync.
      ++retried_errors_;
      if (write_unsynced_from_ != 0) {
        unsynced_closed_.push_back(UnsyncedSegment{seg.first_seq, write_unsynced_from_, std::move(write_fd_)});
        write_unsynced_from_ = 0;
      }
      write_fd_.reset();
      ++next_seq_;
    }
    return sys_error(err, "cannot write record " + std::to_string(seq) + " to", path);
  }
  seg.offsets.push_back(static_cast<std::uint32_t>(seg.size));
  seg.size += rec;
  live_bytes_ += rec;
  ++live_records_;
  ++next_seq_;
  recompute_durable();
  return {};
}

Status Spool::ack(std::uint64_t seq) {
  seq = std::min(seq, next_seq_ - 1);
  if (seq <= acked_seq_) return state_dirty_ ? persist_state() : Status{};
  retire_through(seq);
  acked_seq_ = seq;
  // Segments go only after acked_seq (and next_seq with it) is durable, so a restart can never
  // hand out a seq the collector already holds.
  return persist_state();
}

Spool::ReadOutcome Spool::read_record(std::uint64_t seq, SpoolRecord& out) {
  auto it = std::partition_point(segments_.begin(), segments_.end(),
                                 [seq](const Segment& s) { return s.last_seq() < seq; });
  if (it == segments_.end() || seq < it->first_seq) return ReadOutcome::kInvalid;
  const auto i = static_cast<std::size_t>(seq - it->first_seq);
  const std::uint64_t off = it->offsets[i];
  const std::uint64_t length = it->record_end(i) - off - kHeader;
  if (!read_fd_.valid() || read_seg_first_ != it->first_seq) {
    read_fd_.reset(files_->open(segment_path(it->first_seq).c_str(), O_RDONLY | O_CLOEXEC, 0));
    read_seg_first_ = it->first_seq;
    if (!read_fd_.valid()) return ReadOutcome::kIoError;
  }
  std::array<std::byte, kHeader> hb{};
  const ssize_t n = pread_full(*files_, read_fd_.get(), hb.data(), hb.size(), off);
  if (n < 0) return ReadOutcome::kIoError;
  if (n != static_cast<ssize_t>(kHeader)) return ReadOutcome::kInvalid;
  const Header h = decode_header(hb);
  // The length comes from the index (validated at open), so a rotted length field cannot make us
  // allocate more than max_record_bytes.
  if (h.magic != kRecordMagic || h.length != length || h.seq != seq || length > config_.max_record_bytes) {
    return ReadOutcome::kInvalid;
  }
  out.seq = seq;
  out.payload.resize(static_cast<std::size_t>(length));
  const ssize_t m = pread_full(*files_, read_fd_.get(), out.payload.data(), out.payload.size(), off + kHeader);
  if (m < 0) return ReadOutcome::kIoError;
  if (m != static_cast<ssize_t>(out.payload.size())) return ReadOutcome::kInvalid;
  const std::uint32_t crc =
      crc32c_extend(crc32c(std::span<const std::byte>(hb.data(), kHeaderCrcOffset)), out.payload);
  return crc == h.crc ? ReadOutcome::kOk : ReadOutcome::kInvalid;
}

std::optional<SpoolRecord> Spool::next_unacked(std::uint64_t after_seq) {
  for (std::optional<std::uint64_t> s = first_live_after(after_seq); s; s = first_live_after(*s)) {
    SpoolRecord r;
    const ReadOutcome outcome = read_record(*s, r);
    if (outcome == ReadOutcome::kOk) {
      if (read_fail_seq_ == *s) read_fail_count_ = 0;
      return r;
    }
    if (outcome == ReadOutcome::kIoError) {
      ++retried_errors_;
      read_fd_.reset();  // the next try opens the file again
      if (read_fail_seq_ != *s) {
        read_fail_seq_ = *s;
        read_fail_count_ = 0;
      }
      if (++read_fail_count_ < kReadAttempts) return std::nullopt;  // try again on a later call
      read_fail_count_ = 0;
    }
    // Rotted, or unreadable time after time: it can never be sent, so it stops counting as live.
    ++corrupt_reads_;
    live_bytes_ -= record_bytes(*s);
    --live_records_;
    bad_seqs_.insert(std::upper_bound(bad_seqs_.begin(), bad_seqs_.end(), *s), *s);
  }
  return std::nullopt;
}

void Spool::adopt_bad_seqs(const SpoolBadSeqs& bad) {
  // The incarnation this open found: it may have made a new one since (after damage).
  if (bad.incarnation != found_incarnation_ || found_incarnation_ == SpoolIncarnation{}) return;
  for (const std::uint64_t s : bad.seqs) {
    // Rot found on read and then cut by this open: the earlier spool counted it already.
    for (const auto& [lo, hi] : damage_lost_) {
      if (s >= lo && s <= hi && lost_records_ > 0) --lost_records_;
    }
    if (s <= floor() || is_bad(s) || record_bytes(s) == 0) continue;
    live_bytes_ -= record_bytes(s);
    --live_records_;
    bad_seqs_.insert(std::upper_bound(bad_seqs_.begin(), bad_seqs_.end(), s), s);
  }
}

SpoolStats Spool::stats() const {
  SpoolStats st;
  st.records = live_records_;
  st.live_bytes = live_bytes_;
  for (const Segment& seg : segments_) st.disk_bytes += seg.size;
  st.segments = segments_.size();
  st.oldest_seq = first_live_after(floor()).value_or(0);
  st.newest_seq = last_live().value_or(0);
  st.next_seq = next_seq_;
  st.acked_seq = acked_seq_;
  st.dropped_total = dropped_total_;
  st.fsyncs = fsyncs_;
  st.truncations = truncations_;
  st.truncated_bytes = truncated_bytes_;
  st.lost_records = lost_records_;
  st.corrupt_reads = corrupt_reads_;
  st.append_failures = append_failures_;
  st.retried_errors = retried_errors_;
  st.full_disk_drops = full_disk_drops_;
  st.sync_lost = sync_lost_;
  st.sync_stalls = syncer_->stalls();
  st.sync_stalled_ms = static_cast<std::uint64_t>(syncer_->stalled_for().count());
  st.state_unsaved = state_dirty_;
  return st;
}

}  // namespace vantage::agent::ship
